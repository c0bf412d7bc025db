"""The pieces of `loadtest/bench.py`: baselines, echo servers, load generator, report and plots."""
