"""The event loop's lock-free histograms expose exactly what prometheus_client's would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.telemetry.histograms import LoopHistogramFamily
from gateway.telemetry.metrics import BATCH_SIZE_BUCKETS, DURATION_BUCKETS

VALUES = [0.0, 0.0001, 0.00011, 0.001, 0.0049, 0.005, 0.7, 29.9, 30.0, 31.0, 1e6]


def exposition(registry: CollectorRegistry) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if "_created" not in line]


@pytest.mark.parametrize("bounds", [DURATION_BUCKETS, BATCH_SIZE_BUCKETS])
def test_the_same_observations_give_the_same_exposition(bounds: tuple[float, ...]) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h", "help", ("model", "version"), buckets=bounds, registry=theirs)
    family = LoopHistogramFamily("h", "help", ("model", "version"), bounds)
    ours.register(family)
    for labels in (("a", "1"), ("b", "2")):
        for value in VALUES:
            reference.labels(*labels).observe(value)
            family.labels(*labels).observe(value)
    assert exposition(ours) == exposition(theirs)


def test_a_bound_counts_in_its_own_bucket_and_buckets_are_cumulative() -> None:
    family = LoopHistogramFamily("h", "help", ("l",), (1.0, 2.0))
    child = family.labels("x")
    for value in (1.0, 1.5, 2.0, 2.5):
        child.observe(value)
    (metric,) = family.collect()
    buckets = {s.labels["le"]: s.value for s in metric.samples if s.name == "h_bucket"}
    assert buckets == {"1.0": 1, "2.0": 3, "+Inf": 4}
    assert family.labels("x") is child
    family.labels("a").observe(0.5)
    assert list(family.counts()) == [(("a",), 1), (("x",), 4)]  # read for gateway_requests_total


def test_bad_bounds_and_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        LoopHistogramFamily("h", "help", ("l",), (2.0, 1.0))
    with pytest.raises(ValueError, match="takes labels"):
        LoopHistogramFamily("h", "help", ("l",), (1.0,)).labels("a", "b")
