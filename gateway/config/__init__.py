"""Settings and the model-repository config parser; turns both into core's policy objects."""
