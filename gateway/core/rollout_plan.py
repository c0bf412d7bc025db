"""What a progressive rollout is asked to do (steps, interval, gates), read from its REST form,
and the gates themselves: pure functions of one step's figures, candidate versus stable."""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.core.errors import InvalidInputError
from gateway.core.validation import bounded_number, version_number

DEFAULT_STEPS = (1, 5, 25, 50, 100)
LATENCY_SAMPLES = 10_000
"""Latencies kept per version and step (the latest ones): p99 from a bounded sample."""
PASS, FAIL, SKIPPED = "pass", "fail", "skipped"
"""Gate verdicts; a skipped gate (not enough data to judge) does not stop a rollout."""
MAX_STEPS = 20
MAX_INTERVAL_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Gates:
    """Thresholds a step must meet, candidate compared with stable over the step's window."""

    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    min_p99_increase_ms: float = 1.0
    """The p99 gate fails only when the candidate is also this much slower (noise floor)."""
    min_agreement: float = 0.95
    max_accuracy_drop: float = 0.02
    min_feedback: int = 50


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """A rollout of version `to` against the stable version `from_version`."""

    to: int
    from_version: int
    steps: tuple[int, ...] = DEFAULT_STEPS
    step_interval_s: float = 60.0
    min_requests: int = 100
    shadow_percent: float = 100.0
    gates: Gates = Gates()

    def document(self) -> dict[str, Any]:
        return {
            "to": str(self.to),
            "from": str(self.from_version),
            "steps": list(self.steps),
            "step_interval_s": self.step_interval_s,
            "min_requests": self.min_requests,
            "shadow_percent": self.shadow_percent,
            "gates": asdict(self.gates),
        }


@dataclass(slots=True)
class Window:
    """One version's requests over one step: counts and the latest latencies of ok answers."""

    requests: int = 0
    errors: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    _median_s: float | None = field(default=None, repr=False)
    _median_at: int = field(default=0, repr=False)
    """`requests` when the median was last sorted out: it is sorted again 64 requests on (at
    once while the window holds fewer than 64 ok answers)."""

    def record(self, ok: bool, latency_s: float) -> None:
        self.requests += 1
        if ok:
            self.latencies_s.append(latency_s)
        else:
            self.errors += 1

    def median_s(self) -> float | None:
        """The median latency of the ok answers (None without any), recomputed at most every
        64 requests: callers may ask once a request."""
        samples = self.latencies_s
        stale = self._median_s is None or self.requests - self._median_at >= 64
        if samples and (stale or len(samples) < 64):
            self._median_s, self._median_at = _median(sorted(samples)), self.requests
        return self._median_s

    def figures(self) -> Figures:
        ordered = sorted(self.latencies_s)
        p50_ms = _median(ordered) * 1000.0 if ordered else None
        return Figures(self.requests, self.errors, _p99_ms(ordered), p50_ms)


@dataclass(frozen=True, slots=True)
class Figures:
    """What the gates read of one version over one step."""

    requests: int
    errors: int
    p99_ms: float | None
    p50_ms: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True, slots=True)
class GateResult:
    gate: str
    verdict: str
    detail: str
    figures: Mapping[str, float] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "verdict": self.verdict,
            "detail": self.detail,
            "figures": dict(self.figures),
        }


@dataclass(frozen=True, slots=True)
class Accuracy:
    """A version's windowed accuracy from feedback: correct share of `observations`."""

    observations: int
    accuracy: float | None


def _p99_ms(ordered: list[float]) -> float | None:
    """The nearest-rank 99th percentile of sorted samples, in milliseconds."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] * 1000.0


def _median(ordered: list[float]) -> float:
    return ordered[len(ordered) // 2]


def evaluate(
    gates: Gates,
    candidate: Figures,
    stable: Figures,
    agreement: tuple[int, int],
    accuracy: tuple[Accuracy | None, Accuracy | None],
) -> list[GateResult]:
    """Every gate's verdict on one step: candidate versus stable. `agreement` is (agree,
    disagree) of shadow comparisons in the step; `accuracy` is (candidate, stable)."""
    return [
        _error_gate(gates, candidate, stable),
        _latency_gate(gates, candidate, stable),
        _agreement_gate(gates, *agreement),
        _accuracy_gate(gates, *accuracy),
    ]


def _error_gate(gates: Gates, candidate: Figures, stable: Figures) -> GateResult:
    name = "error_rate"
    if candidate.error_rate is None:
        return GateResult(name, SKIPPED, "the candidate answered no requests")
    stable_rate = stable.error_rate or 0.0
    increase = candidate.error_rate - stable_rate
    figures = {
        "candidate_requests": float(candidate.requests),
        "candidate_errors": float(candidate.errors),
        "candidate_error_rate": candidate.error_rate,
        "stable_requests": float(stable.requests),
        "stable_error_rate": stable_rate,
        "increase": increase,
    }
    detail = (
        f"candidate {candidate.error_rate:.2%} ({candidate.errors}/{candidate.requests}) vs "
        f"stable {stable_rate:.2%}: increase {increase:+.2%}, limit "
        f"{gates.max_error_rate_increase:+.2%}"
    )
    verdict = FAIL if increase > gates.max_error_rate_increase else PASS
    return GateResult(name, verdict, detail, figures)


def _latency_gate(gates: Gates, candidate: Figures, stable: Figures) -> GateResult:
    name = "p99_latency"
    if candidate.p99_ms is None or stable.p99_ms is None:
        who = "the candidate" if candidate.p99_ms is None else "the stable version"
        return GateResult(name, SKIPPED, f"{who} answered no requests successfully")
    ratio = candidate.p99_ms / stable.p99_ms if stable.p99_ms > 0 else math.inf
    figures = {"candidate_p99_ms": candidate.p99_ms, "stable_p99_ms": stable.p99_ms}
    if math.isfinite(ratio):
        figures["ratio"] = ratio
    slower = candidate.p99_ms - stable.p99_ms
    detail = (
        f"candidate p99 {candidate.p99_ms:.2f} ms vs stable {stable.p99_ms:.2f} ms: ratio "
        f"{ratio:.2f}, limit {gates.max_p99_ratio:g} (and +{gates.min_p99_increase_ms:g} ms)"
    )
    failed = ratio > gates.max_p99_ratio and slower > gates.min_p99_increase_ms
    return GateResult(name, FAIL if failed else PASS, detail, figures)


def _agreement_gate(gates: Gates, agree: int, disagree: int) -> GateResult:
    name = "agreement"
    compared = agree + disagree
    if not compared:
        return GateResult(name, SKIPPED, "no shadow comparisons in this step")
    share = agree / compared
    figures = {"agree": float(agree), "disagree": float(disagree), "agreement": share}
    detail = (
        f"{share:.2%} of {compared} shadow comparisons agree, minimum {gates.min_agreement:.2%}"
    )
    return GateResult(name, FAIL if share < gates.min_agreement else PASS, detail, figures)


def _accuracy_gate(gates: Gates, candidate: Accuracy | None, stable: Accuracy | None) -> GateResult:
    name = "accuracy"
    counts = [
        a.observations if a is not None and a.accuracy is not None else 0
        for a in (candidate, stable)
    ]
    if candidate is None or stable is None or min(counts) < gates.min_feedback:
        return GateResult(
            name,
            SKIPPED,
            f"not enough feedback: candidate {counts[0]}, stable {counts[1]} observations, "
            f"{gates.min_feedback} needed",
        )
    assert candidate.accuracy is not None and stable.accuracy is not None
    drop = stable.accuracy - candidate.accuracy
    figures = {
        "candidate_accuracy": candidate.accuracy,
        "candidate_observations": float(candidate.observations),
        "stable_accuracy": stable.accuracy,
        "stable_observations": float(stable.observations),
        "drop": drop,
    }
    detail = (
        f"candidate {candidate.accuracy:.2%} vs stable {stable.accuracy:.2%}: drop {drop:+.2%}, "
        f"limit {gates.max_accuracy_drop:+.2%}"
    )
    return GateResult(name, FAIL if drop > gates.max_accuracy_drop else PASS, detail, figures)


# -- the REST form --------------------------------------------------------------------------
PLAN_FIELDS = frozenset(
    {"to", "from", "steps", "step_interval_s", "min_requests", "shadow_percent", "gates"}
)
GATE_LIMITS: dict[str, tuple[float, float]] = {
    "max_error_rate_increase": (0.0, 1.0),
    "max_p99_ratio": (1.0, 1e6),
    "min_p99_increase_ms": (0.0, 1e7),
    "min_agreement": (0.0, 1.0),
    "max_accuracy_drop": (0.0, 1.0),
    "min_feedback": (1, 1e9),
}


def _whole(value: object, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInputError(
            f"{where} must be a whole number from {low} to {high}, got {value!r:.40}"
        )
    return value


def parse_plan(document: object, default_from: Callable[[int], int | None]) -> RolloutPlan:
    """The plan from its REST form; `default_from(to)` gives the stable version when "from" is
    absent. InvalidInputError naming the field that is wrong."""
    if not isinstance(document, dict):
        raise InvalidInputError(
            'expected a JSON object like {"to": "2", "steps": [1, 5, 25, 50, 100], '
            '"step_interval_s": 60, "min_requests": 100}'
        )
    unknown = sorted(set(document) - PLAN_FIELDS)
    if unknown:
        raise InvalidInputError(
            f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(PLAN_FIELDS))}"
        )
    if "to" not in document:
        raise InvalidInputError('"to" must name the candidate version, like {"to": "2"}')
    to = version_number(document["to"], '"to"')
    if document.get("from") not in (None, ""):
        from_version = version_number(document["from"], '"from"')
    else:
        found = default_from(to)
        if found is None:
            raise InvalidInputError(
                f'no stable version to roll out from: name one with "from" (version {to} is '
                "the only READY version)"
            )
        from_version = found
    if from_version == to:
        raise InvalidInputError(f'"from" and "to" are both version {to}')
    steps = DEFAULT_STEPS
    if "steps" in document:
        given = document["steps"]
        if not isinstance(given, list) or not 1 <= len(given) <= MAX_STEPS:
            raise InvalidInputError(f'"steps" must be a list of 1 to {MAX_STEPS} percentages')
        for index in range(len(given)):
            _whole(given[index], f'"steps"[{index}]', 1, 100)
        if any(b <= a for a, b in itertools.pairwise(given)) or given[-1] != 100:
            raise InvalidInputError(
                '"steps" must increase and end at 100, like [1, 5, 25, 50, 100]'
            )
        steps = tuple(given)
    options: dict[str, Any] = {}
    if "step_interval_s" in document:
        interval = bounded_number(
            document["step_interval_s"], '"step_interval_s"', 0.0, MAX_INTERVAL_S
        )
        if interval <= 0:
            raise InvalidInputError('"step_interval_s" must be a positive number of seconds')
        options["step_interval_s"] = interval
    if "min_requests" in document:
        options["min_requests"] = _whole(document["min_requests"], '"min_requests"', 0, 10**9)
    if "shadow_percent" in document:
        options["shadow_percent"] = bounded_number(
            document["shadow_percent"], '"shadow_percent"', 0, 100
        )
    gates = parse_gates(document.get("gates", {}) or {})
    return RolloutPlan(to, from_version, steps, gates=gates, **options)


def parse_gates(document: object) -> Gates:
    if not isinstance(document, dict):
        raise InvalidInputError('"gates" must be an object like {"max_p99_ratio": 1.5}')
    unknown = sorted(set(document) - set(GATE_LIMITS))
    if unknown:
        raise InvalidInputError(
            f"unknown gate(s) {', '.join(unknown)}; expected {', '.join(GATE_LIMITS)}"
        )
    values: dict[str, Any] = {}
    for key, (low, high) in GATE_LIMITS.items():
        if key in document:
            where = f'"gates".{key}'
            if key == "min_feedback":
                values[key] = _whole(document[key], where, int(low), int(high))
            else:
                values[key] = bounded_number(document[key], where, low, high)
    return Gates(**values)
