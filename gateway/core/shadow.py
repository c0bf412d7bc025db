"""Shadow traffic: copies of routed requests run on another version, and the two answers are
compared, without any risk to the caller.

The caller's answer never waits for a shadow. Shadow copies go through the shadow version's own
low-priority batcher (a small line, run on the shadow thread pool whose threads yield the CPU
to serving) and a bounded number may be in flight; a copy that does not fit, or that would add
to a primary line that is already half full, is dropped and counted. When both answers are in,
they are compared: top-1 class for classifiers, max absolute and relative difference (within a
tolerance) for numbers. Agreement is counted per (model, primary version, shadow version), and
a few disagreements a minute are logged with the request id and both predictions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.errors import GatewayError
from gateway.core.prediction import Prediction, PredictionRule, predicted_values, prediction_rule
from gateway.core.registry import ModelVersion
from gateway.core.telemetry import OK, RequestEvent, RequestTiming, Telemetry
from gateway.core.traffic import Tolerance
from gateway.core.types import InferRequest, Tensor
from gateway.core.validation import validate_request

logger = logging.getLogger("gateway.shadow")

AGREE, DISAGREE, ERROR, DROPPED = "agree", "disagree", "error", "dropped"
SHADOW_TIMEOUT_S = 5.0
"""A copy that waited this long for the low-priority pool is dropped: the gateway is busy."""
LOGGED_PER_MINUTE = 10
LOG_VALUE_CHARS = 200


@dataclass(slots=True)
class PairStatistics:
    """Comparisons between one primary version and one shadow version."""

    agree: int = 0
    disagree: int = 0
    error: int = 0
    dropped: int = 0
    max_abs_diff: float = 0.0

    @property
    def agreement(self) -> float | None:
        compared = self.agree + self.disagree
        return self.agree / compared if compared else None


PairKey = tuple[str, str, str]
"""(model, primary version, shadow version)"""


class ShadowDispatcher:
    """Starts shadow copies, compares their answers, keeps the figures."""

    def __init__(self, telemetry: Telemetry, *, max_in_flight: int = 64) -> None:
        self._telemetry = telemetry
        self._max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self.pairs: dict[PairKey, PairStatistics] = {}
        self._rules: dict[tuple[str, int, str], PredictionRule | None] = {}
        """By (model, version, fingerprint): a reload with other files or config re-reads it."""
        self._logged_minute = 0
        self._logged = 0

    def pair(self, model: str, primary: int, shadow: int) -> PairStatistics:
        key = (model, str(primary), str(shadow))
        found = self.pairs.get(key)
        if found is None:
            found = self.pairs[key] = PairStatistics()
        return found

    def submit(
        self,
        request: InferRequest,
        primary: ModelVersion,
        shadow: ModelVersion,
        primary_answer: asyncio.Future[Sequence[Tensor] | None],
        tolerance: Tolerance,
        protocol: str,
    ) -> None:
        """Start one shadow copy, or count it dropped when the gateway has no room for it."""
        statistics = self.pair(request.model_name, primary.version, shadow.version)
        primary_batcher = primary.batcher
        busy = primary_batcher is not None and (
            primary_batcher.waiting * 2 >= primary_batcher.config.max_queue_size
        )
        if busy or len(self._tasks) >= self._max_in_flight or shadow.shadow_batcher is None:
            statistics.dropped += 1
            return
        # The primary's rule is read now, while it serves: by the time the copy is compared
        # the primary may have left service (its config gone), and must still be judged by it.
        rule = self._rule(primary)
        shadow.acquire()  # an unload waits for the copy; released when its task is done, even
        task = asyncio.create_task(  # a task cancelled before it ever ran
            self._run(
                request, primary, shadow, primary_answer, tolerance, protocol, statistics, rule
            )
        )
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            shadow.release()
            if not finished.cancelled() and finished.exception() is not None:
                logger.error("shadow copy failed", exc_info=finished.exception())

        task.add_done_callback(done)

    async def _run(
        self,
        request: InferRequest,
        primary: ModelVersion,
        shadow: ModelVersion,
        primary_answer: asyncio.Future[Sequence[Tensor] | None],
        tolerance: Tolerance,
        protocol: str,
        statistics: PairStatistics,
        rule: PredictionRule | None,
    ) -> None:
        started_ns = time.perf_counter_ns()
        timing = RequestTiming()
        code, error, rows, batch_size = OK, "", 0, 0
        outputs: list[Tensor] | None = None
        try:
            loaded, batcher = shadow.loaded, shadow.shadow_batcher
            assert loaded is not None and batcher is not None
            feeds, names, batch_size = validate_request(request, loaded.signature)
            rows = max(batch_size, 1)
            arrays = await batcher.infer(feeds, names, batch_size, SHADOW_TIMEOUT_S, timing)
            specs = loaded.signature.outputs_by_name
            outputs = [
                Tensor(name, specs[name].datatype, array)
                for name, array in zip(names, arrays, strict=True)
            ]
        except GatewayError as failure:
            code, error = failure.code.value, failure.message
        except asyncio.CancelledError:
            code = "cancelled"
            raise
        finally:
            self._telemetry.request_finished(
                RequestEvent(
                    request.model_name,
                    str(shadow.version),
                    "shadow",
                    protocol,
                    code,
                    started_ns,
                    time.perf_counter_ns(),
                    rows,
                    timing,
                    request.id,
                    error,
                ),
                None,
            )
        if outputs is None:
            if code in ("overloaded", "deadline_exceeded"):
                statistics.dropped += 1
            else:
                statistics.error += 1
            return
        answer = await asyncio.shield(primary_answer)  # shared: a cancelled copy leaves it be
        if answer is None:  # the primary failed: nothing to compare with
            return
        self._compare(
            request, primary, shadow, answer, outputs, tolerance, statistics, rule, batch_size
        )

    def _compare(
        self,
        request: InferRequest,
        primary: ModelVersion,
        shadow: ModelVersion,
        expected: Sequence[Tensor],
        got: Sequence[Tensor],
        tolerance: Tolerance,
        statistics: PairStatistics,
        rule: PredictionRule | None,
        batch_size: int,
    ) -> None:
        """Counted per row (a request of 5 rows is 5 comparisons), so agreement does not depend
        on how clients batch their rows; an unbatched model's request (`batch_size` 0) is one
        row."""
        rows = max(batch_size, 1)
        shown: tuple[Any, Any]
        if rule is not None and rule.prediction is not Prediction.VALUE:
            mine, theirs = predicted_values(rule, expected), predicted_values(rule, got)
            if mine is not None and theirs is not None and len(mine) == len(theirs) == rows:
                agreeing = sum(m == t for m, t in zip(mine, theirs, strict=True))
            else:  # one answer per request (or none): the request is the comparison
                rows, agreeing = 1, int(mine is not None and mine == theirs)
            shown = (mine, theirs)
        else:
            agreeing, difference = _numeric_agreement(expected, got, tolerance, batch_size)
            statistics.max_abs_diff = max(statistics.max_abs_diff, difference)
            shown = (_preview(expected), _preview(got))
        statistics.agree += agreeing
        statistics.disagree += rows - agreeing
        if agreeing < rows:
            self._log_disagreement(request, primary, shadow, shown)

    def _rule(self, version: ModelVersion) -> PredictionRule | None:
        loaded = version.loaded
        if loaded is None:
            return None
        key = (version.name, version.version, version.fingerprint)
        if key not in self._rules:
            try:
                self._rules[key] = prediction_rule(loaded.signature, loaded.policy.parameters)
            except ValueError:
                self._rules[key] = None
        return self._rules[key]

    def _log_disagreement(
        self, request: InferRequest, primary: ModelVersion, shadow: ModelVersion, shown: Any
    ) -> None:
        minute = int(time.monotonic() // 60)
        if minute != self._logged_minute:
            self._logged_minute, self._logged = minute, 0
        if self._logged >= LOGGED_PER_MINUTE:
            return
        self._logged += 1
        logger.info(
            "shadow disagreement model=%s id=%r primary=%d:%.*s shadow=%d:%.*s",
            request.model_name,
            request.id,
            primary.version,
            LOG_VALUE_CHARS,
            shown[0],
            shadow.version,
            LOG_VALUE_CHARS,
            shown[1],
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def wait_idle(self) -> None:
        """Return once every shadow copy started so far is done (tests, benchmarks)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _numeric_agreement(
    expected: Sequence[Tensor], got: Sequence[Tensor], tolerance: Tolerance, rows: int
) -> tuple[int, float]:
    """How many rows agree (every output both answers have close on that row; `rows` 0: the
    model has no batch dimension and the whole answer is one row), and the largest absolute
    difference."""
    theirs: Mapping[str, npt.NDArray[Any]] = {t.name: t.array for t in got}
    count = max(rows, 1)
    agree = np.ones(count, dtype=bool)
    largest = 0.0
    for tensor in expected:
        other = theirs.get(tensor.name)
        mine = tensor.array
        if other is None or other.shape != mine.shape or (rows and mine.shape[:1] != (rows,)):
            return 0, float("inf")
        if mine.dtype == object or other.dtype == object:
            same = np.asarray(mine == other, dtype=bool)
        else:
            a, b = mine.astype(np.float64), other.astype(np.float64)
            if a.size:
                largest = max(largest, float(np.max(np.abs(a - b))))
            same = np.isclose(b, a, atol=tolerance.atol, rtol=tolerance.rtol)
        agree &= same.reshape(count, -1).all(axis=1) if same.size else True
    return int(agree.sum()), largest


def _preview(outputs: Sequence[Tensor]) -> str:
    return "; ".join(f"{t.name}={np.array2string(t.array, threshold=8)}" for t in outputs)
