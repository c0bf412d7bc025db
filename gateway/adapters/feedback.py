"""Feedback results and per-version accuracy as dicts, for both adapters.

HTTP sends them as JSON, gRPC parses them into gateway.v1 messages, so both protocols report
the same figures under the same names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.core.feedback import FeedbackResult, FeedbackStore, VersionAccuracy


def result_dict(result: FeedbackResult) -> dict[str, Any]:
    document: dict[str, Any] = {"id": result.id, "outcome": result.outcome.value}
    if result.version:
        document["version"] = result.version
    if result.observations:
        document["observations"] = result.observations
    if result.correct is not None:
        document["correct"] = result.correct
    if result.absolute_error is not None:
        document["absolute_error"] = result.absolute_error
    if result.error:
        document["error"] = result.error
    return document


def _version_dict(figures: VersionAccuracy) -> dict[str, Any]:
    return {
        "version": figures.version,
        "prediction": figures.prediction,
        "output": figures.output,
        "recorded": figures.recorded,
        "feedback": dict(sorted(figures.feedback.items())),
        "observations": figures.observations,
        "correct": figures.correct,
        "accuracy": figures.accuracy,
        "window_observations": figures.window_observations,
        "window_correct": figures.window_correct,
        "window_accuracy": figures.window_accuracy,
        "value_observations": figures.value_observations,
        "mean_absolute_error": figures.mean_absolute_error,
        "window_value_observations": figures.window_value_observations,
        "window_mean_absolute_error": figures.window_mean_absolute_error,
    }


def accuracy_dict(model: str, store: FeedbackStore) -> dict[str, Any]:
    """Every version of `model` with figures; version "" counts feedback for unknown ids."""
    versions: Sequence[VersionAccuracy] = store.snapshot(model)
    return {
        "model": model,
        "window": store.window,
        "versions": [_version_dict(figures) for figures in versions],
    }
