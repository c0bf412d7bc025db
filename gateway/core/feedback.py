"""Ground-truth feedback: what each version predicted per request id, joined with the true
label sent later, and per-version accuracy (windowed and total) and mean absolute error.

Recording is on the request path, so it is O(1) and small: the prediction is reduced to a few
Python numbers at once (never the output array), kept in an insertion-ordered map bounded by
count and age. Ids that fell out of it leave a bounded trace so late feedback answers
"expired" rather than "unknown_id".
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.errors import InvalidInputError
from gateway.core.model import LoadedVersion
from gateway.core.prediction import (
    Label,
    Prediction,
    PredictionRule,
    parse_label,
    predicted_values,
    prediction_rule,
)
from gateway.core.types import Tensor

logger = logging.getLogger(__name__)

MAX_FEEDBACK_ITEMS = 10_000
"""The most feedback items one call may carry."""
MAX_ID_CHARS = 256
"""Requests with longer ids are not remembered (memory stays bounded by the entry count)."""


class Outcome(enum.Enum):
    """What became of one feedback item."""

    JOINED = "joined"
    UNKNOWN_ID = "unknown_id"
    EXPIRED = "expired"
    DUPLICATE = "duplicate"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class Feedback:
    """One true label for the request `id` of a model."""

    id: str
    label: Label


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """What became of one feedback item: which version it joined, and how it scored."""

    id: str
    outcome: Outcome
    version: str = ""
    observations: int = 0
    """Values joined (rows for a classifier)."""
    correct: int | None = None
    """Rows whose predicted class was right (classifiers)."""
    absolute_error: float | None = None
    """Mean absolute error of the joined values (regression)."""
    error: str = ""
    """Why an INVALID item could not be joined."""


@dataclass(frozen=True, slots=True)
class VersionAccuracy:
    """Accuracy figures of one model version, as FeedbackStore.snapshot reads them.

    `version` "" holds what cannot be attributed to a version: feedback for unknown ids."""

    model: str
    version: str
    prediction: str
    """label, argmax or value; "" when unknown."""
    output: str
    recorded: int
    """Predictions remembered for feedback."""
    feedback: Mapping[str, int]
    """Feedback items by Outcome value."""
    observations: int
    correct: int
    window_observations: int
    window_correct: int
    absolute_error_sum: float
    window_absolute_error_sum: float
    value_observations: int
    window_value_observations: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.observations if self.observations else None

    @property
    def window_accuracy(self) -> float | None:
        if not self.window_observations:
            return None
        return self.window_correct / self.window_observations

    @property
    def mean_absolute_error(self) -> float | None:
        if not self.value_observations:
            return None
        return self.absolute_error_sum / self.value_observations

    @property
    def window_mean_absolute_error(self) -> float | None:
        if not self.window_value_observations:
            return None
        return self.window_absolute_error_sum / self.window_value_observations


class _VersionStats:
    """Running figures of one (model, version); the windows hold the last N observations."""

    __slots__ = (
        "correct",
        "error_sum",
        "errors",
        "hits",
        "loaded",
        "observations",
        "outcomes",
        "recorded",
        "rule",
        "value_observations",
    )

    def __init__(self, window: int) -> None:
        self.loaded: LoadedVersion | None = None
        self.rule: PredictionRule | None = None
        self.recorded = 0
        self.outcomes: dict[str, int] = {}
        self.observations = 0
        self.correct = 0
        self.hits: deque[int] = deque(maxlen=window)
        self.error_sum = 0.0
        self.value_observations = 0
        self.errors: deque[float] = deque(maxlen=window)

    def count(self, outcome: Outcome) -> None:
        self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1


class _Entry:
    """One remembered prediction."""

    __slots__ = ("at_s", "joined", "predicted", "rule", "stats", "version")

    def __init__(
        self,
        version: int,
        stats: _VersionStats,
        rule: PredictionRule,
        predicted: tuple[Any, ...],
        at_s: float,
    ) -> None:
        self.version, self.stats, self.rule = version, stats, rule
        self.predicted, self.at_s, self.joined = predicted, at_s, False


Key = tuple[str, str]


class FeedbackStore:
    """Predictions by (model, request id), at most `max_entries` of them and none older than
    `ttl_s`; accuracy per (model, version) over everything joined and over the last `window`
    observations.

    `record` and `submit` run on the event loop only (the gRPC front ends hand feedback calls
    to it too), so they need no lock; `snapshot` may run on any thread (a metrics scrape): it
    reads through single copies that the GIL makes atomic."""

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        ttl_s: float = 3600.0,
        window: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 0 or ttl_s <= 0 or window < 1:
            raise ValueError("max_entries >= 0, ttl_s > 0 and window >= 1 are required")
        self.max_entries, self.ttl_s, self.window = max_entries, ttl_s, window
        self._clock = clock
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._gone: OrderedDict[Key, _Entry] = OrderedDict()
        """Ids that expired or were pushed out (bounded like the entries): 'expired'."""
        self._stats: dict[tuple[str, int], _VersionStats] = {}
        self._unknown: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    # -- the request path -------------------------------------------------------------------
    def record(
        self,
        loaded: LoadedVersion,
        request_id: str,
        outputs: Sequence[Tensor],
        label: object = None,
    ) -> None:
        """Remember what `loaded` answered to `request_id` (when there is one), and join
        `label` at once when the request carried one (its `label` parameter)."""
        parsed = None if label is None else parse_label(label, "parameter 'label'")
        if len(request_id) > MAX_ID_CHARS:
            request_id = ""
        if parsed is None and not (request_id and self.max_entries):
            return
        stats = self._stats.get((loaded.name, loaded.version))
        if stats is None or stats.loaded is not loaded:  # first request, or a reload
            stats = self._version(loaded)
        rule = stats.rule
        predicted = None if rule is None else predicted_values(rule, outputs)
        if predicted is None or rule is None:
            if parsed is not None:
                what = "no prediction output" if rule is None else f"no output '{rule.output}'"
                raise InvalidInputError(
                    f"parameter 'label' cannot be joined: the answer has {what} "
                    "(see the model's 'prediction_output' parameter)"
                )
            return
        entry = _Entry(loaded.version, stats, rule, predicted, self._clock())
        if parsed is not None:
            result = self._join(entry, Feedback(request_id, parsed), "parameter 'label'")
            if result.outcome is Outcome.INVALID:
                raise InvalidInputError(result.error)
        if request_id and self.max_entries:
            stats.recorded += 1
            self._remember((loaded.name, request_id), entry)

    def _version(self, loaded: LoadedVersion) -> _VersionStats:
        key = (loaded.name, loaded.version)
        stats = self._stats.get(key)
        if stats is None:
            stats = _VersionStats(self.window)
        stats.loaded, stats.rule = loaded, self._rule(loaded)
        self._stats[key] = stats  # after it is complete: snapshot may read it at any time
        return stats

    def _rule(self, loaded: LoadedVersion) -> PredictionRule | None:
        try:
            return prediction_rule(loaded.signature, loaded.policy.parameters)
        except ValueError as problem:
            logger.warning("%s version %d: no accuracy: %s", loaded.name, loaded.version, problem)
            return None

    def _remember(self, key: Key, entry: _Entry) -> None:
        entries = self._entries
        entries.pop(key, None)  # a reused id refers to its latest request
        entries[key] = entry
        cutoff = entry.at_s - self.ttl_s
        while len(entries) > self.max_entries or next(iter(entries.values())).at_s < cutoff:
            self._forget(*entries.popitem(last=False))

    def _forget(self, key: Key, entry: _Entry) -> None:
        entry.predicted = ()  # only its version and whether it was joined are needed now
        gone = self._gone
        gone.pop(key, None)
        gone[key] = entry
        if len(gone) > self.max_entries:
            gone.popitem(last=False)

    # -- feedback ---------------------------------------------------------------------------
    def submit(
        self, model: str, items: Sequence[Feedback], field: str = "feedback"
    ) -> list[FeedbackResult]:
        """Join each item with the prediction its id got; one result per item, in order.
        `field` names the items in error messages (`feedback[3].label`; "" for one item:
        `label`)."""
        now = self._clock()
        return [
            self._submit_one(model, item, now, f"{field}[{index}].label" if field else "label")
            for index, item in enumerate(items)
        ]

    def _submit_one(self, model: str, item: Feedback, now: float, where: str) -> FeedbackResult:
        key = (model, item.id)
        entry = self._entries.get(key)
        if entry is not None and entry.at_s < now - self.ttl_s:
            self._forget(key, self._entries.pop(key))
            entry = None
        if entry is None:
            gone = self._gone.get(key)
            if gone is None:
                self._unknown[model] = self._unknown.get(model, 0) + 1
                return FeedbackResult(item.id, Outcome.UNKNOWN_ID)
            outcome = Outcome.DUPLICATE if gone.joined else Outcome.EXPIRED
            gone.stats.count(outcome)
            return FeedbackResult(item.id, outcome, str(gone.version))
        if entry.joined:
            entry.stats.count(Outcome.DUPLICATE)
            return FeedbackResult(item.id, Outcome.DUPLICATE, str(entry.version))
        return self._join(entry, item, where)

    def _join(self, entry: _Entry, item: Feedback, where: str) -> FeedbackResult:
        stats, rule, predicted = entry.stats, entry.rule, entry.predicted
        version = str(entry.version)
        if len(item.label) != len(predicted):
            return self._invalid(
                entry,
                item,
                f"{where} has {len(item.label)} value(s) but version {version} predicted "
                f"{len(predicted)} for this request",
            )
        if rule.prediction is Prediction.VALUE:
            if any(isinstance(v, str) for v in item.label):
                return self._invalid(
                    entry, item, f"{where} must be numbers: version {version} predicts values"
                )
            errors = [abs(float(p) - float(t)) for p, t in zip(predicted, item.label, strict=True)]
            for error in errors:
                stats.errors.append(error)
            stats.error_sum += math.fsum(errors)
            stats.value_observations += len(errors)
            entry.joined = True
            stats.count(Outcome.JOINED)
            mean = math.fsum(errors) / len(errors)
            return FeedbackResult(
                item.id, Outcome.JOINED, version, len(errors), absolute_error=mean
            )
        truth: list[int] = []
        for value in item.label:
            if isinstance(value, str):
                index = rule.class_names.get(value)
                if index is None:
                    problem = (
                        f"'{value}' is not one of its class_names"
                        if rule.class_names
                        else "the model configures no class_names; send the class index"
                    )
                    return self._invalid(
                        entry, item, f"{where}: unknown class name for version {version}: {problem}"
                    )
                truth.append(index)
            elif isinstance(value, float) and not value.is_integer():
                return self._invalid(
                    entry, item, f"{where} must be class indices (integers), got {value}"
                )
            else:
                index = int(value)
                classes = len(rule.class_names)
                if index < 0 or (classes and index >= classes):
                    bound = f" (version {version} has {classes} class_names)" if classes else ""
                    return self._invalid(
                        entry, item, f"{where}: class index {index} is out of range{bound}"
                    )
                truth.append(index)
        hits = [int(p == t) for p, t in zip(predicted, truth, strict=True)]
        for hit in hits:
            stats.hits.append(hit)
        correct = sum(hits)
        stats.correct += correct
        stats.observations += len(hits)
        entry.joined = True
        stats.count(Outcome.JOINED)
        return FeedbackResult(item.id, Outcome.JOINED, version, len(hits), correct=correct)

    def _invalid(self, entry: _Entry, item: Feedback, error: str) -> FeedbackResult:
        entry.stats.count(Outcome.INVALID)
        return FeedbackResult(item.id, Outcome.INVALID, str(entry.version), error=error)

    # -- reading ----------------------------------------------------------------------------
    def snapshot(self, model: str | None = None) -> list[VersionAccuracy]:
        """Figures of every (model, version) that recorded a prediction or got feedback (of
        `model` only, when given), sorted; a version "" entry per model counts unknown ids."""
        found: list[VersionAccuracy] = []
        for (name, number), stats in sorted(self._stats.copy().items()):
            if model is not None and name != model:
                continue
            rule = stats.rule
            hits, errors = list(stats.hits), list(stats.errors)
            found.append(
                VersionAccuracy(
                    model=name,
                    version=str(number),
                    prediction=rule.prediction.value if rule else "",
                    output=rule.output if rule else "",
                    recorded=stats.recorded,
                    feedback=stats.outcomes.copy(),
                    observations=stats.observations,
                    correct=stats.correct,
                    window_observations=len(hits),
                    window_correct=sum(hits),
                    absolute_error_sum=stats.error_sum,
                    window_absolute_error_sum=math.fsum(errors),
                    value_observations=stats.value_observations,
                    window_value_observations=len(errors),
                )
            )
        for name, unknown in sorted(self._unknown.copy().items()):
            if model is None or name == model:
                found.append(_unattributed(name, unknown))
        return found


def _unattributed(model: str, unknown: int) -> VersionAccuracy:
    return VersionAccuracy(
        model=model,
        version="",
        prediction="",
        output="",
        recorded=0,
        feedback={Outcome.UNKNOWN_ID.value: unknown},
        observations=0,
        correct=0,
        window_observations=0,
        window_correct=0,
        absolute_error_sum=0.0,
        window_absolute_error_sum=0.0,
        value_observations=0,
        window_value_observations=0,
    )
