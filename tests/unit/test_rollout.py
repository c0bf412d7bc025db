"""The rollout controller on a fake clock with fake figures: steps, each gate, holding,
promotion, abort, and a rollout resumed from its persisted document."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.core.errors import GatewayError, InvalidInputError, NotFoundError
from gateway.core.registry import ModelRegistry, ModelVersion, VersionState
from gateway.core.rollout import RolloutController
from gateway.core.rollout_plan import (
    FAIL,
    PASS,
    SKIPPED,
    Accuracy,
    Figures,
    Gates,
    evaluate,
    parse_plan,
)
from gateway.core.rollout_state import Rollout
from gateway.core.shadow import ShadowDispatcher
from gateway.core.telemetry import RequestEvent, RequestTiming, Telemetry
from gateway.core.traffic import Shadow, TrafficPolicy

MS = 1_000_000


class FakeLifecycle:
    """What the controller needs of the lifecycle, over a real registry, saving in memory."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.saved: dict[tuple[str, str], Any] = {}

    async def set_traffic(
        self,
        name: str,
        policy: TrafficPolicy | None,
        persisted: TrafficPolicy | None = None,
        when: Callable[[], bool] | None = None,
    ) -> bool:
        if when is not None and not when():
            return False
        self.registry.set_traffic(name, policy)
        saved = persisted or policy
        self.saved[(name, "traffic")] = None if saved is None else saved.document()
        return True

    async def set_label(self, name: str, label: str, version: str) -> None:
        self.registry.set_label(name, label, version)

    async def save_document(self, name: str, kind: str, document: Any) -> None:
        self.saved[(name, kind)] = document


@dataclass
class FakeAccuracy:
    version: str
    window_observations: int
    window_accuracy: float | None


@dataclass
class FakeFeedback:
    figures: list[FakeAccuracy] = field(default_factory=list)

    def snapshot(self, model: str | None = None) -> list[FakeAccuracy]:
        return self.figures


@dataclass
class Traffic:
    """Requests fed to the controller at every poll: per version (count, errors, latency ms)."""

    per_poll: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    agree: int = 0
    disagree: int = 0
    error_code: str = "internal"
    errors_pinned: bool = False
    """The errors' requests named their version (number or label)."""
    errors_limit_s: float | None = None
    """The wait limit their callers set."""
    errors_ran: bool = False
    """They reached a batch (launched) before they failed."""


class Harness:
    def __init__(self, versions: tuple[int, ...] = (1, 2)) -> None:
        self.now = 0.0
        self.registry = ModelRegistry(workers=None)  # type: ignore[arg-type]
        entry = self.registry.entry("m")
        for number in versions:
            entry.versions[number] = ModelVersion("m", number, VersionState.READY)
        self.lifecycle = FakeLifecycle(self.registry)
        self.shadows = ShadowDispatcher(Telemetry())
        self.feedback = FakeFeedback()
        self.traffic = Traffic()
        self.controller = self.make_controller()

    def make_controller(self) -> RolloutController:
        return RolloutController(
            self.lifecycle,  # type: ignore[arg-type]
            self.shadows,
            self.feedback,  # type: ignore[arg-type]
            clock=lambda: self.now,
            sleep=self.sleep,
            wall_clock=lambda: 1_700_000_000.0 + self.now,
        )

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        for version, (count, errors, latency_ms) in self.traffic.per_poll.items():
            for i in range(count):
                failed = i < errors
                ran = failed and self.traffic.errors_ran
                event = RequestEvent(
                    "m",
                    version,
                    "primary",
                    "http",
                    self.traffic.error_code if failed else "ok",
                    0,
                    int(latency_ms * MS),
                    1,
                    RequestTiming(launched_ns=1 if ran else 0),
                    pinned=failed and self.traffic.errors_pinned,
                    caller_limit_s=self.traffic.errors_limit_s if failed else None,
                )
                self.controller.request_finished(event)
        pair = self.shadows.pair("m", 1, 2)
        pair.agree += self.traffic.agree
        pair.disagree += self.traffic.disagree
        await asyncio.sleep(0)

    async def until_done(self, limit: int = 20_000) -> dict[str, Any]:
        for _ in range(limit):
            if self.controller.active("m") is None:
                return self.controller.status("m")
            await asyncio.sleep(0)
        raise AssertionError(f"still {self.controller.status('m')['state']}")

    async def until(self, condition: Callable[[], bool], limit: int = 20_000) -> None:
        for _ in range(limit):
            if condition():
                return
            await asyncio.sleep(0)
        raise AssertionError("condition never held")


PLAN = {"to": "2", "from": "1", "step_interval_s": 10, "min_requests": 20}
GOOD = {"1": (10, 0, 2.0), "2": (10, 0, 2.0)}


async def test_a_good_candidate_goes_through_every_step_and_is_promoted() -> None:
    h = Harness()
    h.traffic.per_poll = GOOD
    h.traffic.agree = 5
    answer = await h.controller.start("m", PLAN)
    assert (answer["state"], answer["step"], answer["weight"]) == ("running", 1, 1)
    entry = h.registry.get_model("m")
    assert entry.traffic is not None and dict(entry.traffic.weights) == {1: 99, 2: 1}
    assert entry.traffic.shadows == (Shadow(2, 100.0),)
    # The persisted policy leaves the shadow out (the resumed rollout adds it again).
    assert h.lifecycle.saved[("m", "traffic")]["shadows"] == []
    assert h.lifecycle.saved[("m", "rollout")]["pinned_versions"] == [1, 2]
    done = await h.until_done()
    assert done["state"] == "promoted" and "every step passed" in done["reason"]
    assert entry.labels == {"stable": 2}
    assert dict(entry.traffic.weights) == {2: 100} and entry.traffic.shadows == ()
    weights = [
        item["weight"]
        for item in done["history"]
        if item["reason"].startswith("step") and "passed" in item["reason"]
    ]
    assert weights == [1, 5, 25, 50]
    assert "pinned_versions" not in h.lifecycle.saved[("m", "rollout")]
    assert h.controller.outcomes[("m", "promoted")] == 1
    # At 100% the stable version serves nothing: the baseline of the step before is used.
    assert h.now >= 50


@pytest.mark.parametrize(
    ("traffic", "gate", "fragment"),
    [
        ({"1": (10, 0, 2.0), "2": (10, 3, 2.0)}, "error_rate", "30.00%"),
        ({"1": (10, 0, 2.0), "2": (10, 0, 9.0)}, "p99_latency", "ratio 4.50"),
    ],
)
async def test_a_failing_gate_rolls_back_and_says_why(
    traffic: dict[str, tuple[int, int, float]], gate: str, fragment: str
) -> None:
    h = Harness()
    h.traffic.per_poll = traffic
    await h.controller.start("m", PLAN)
    done = await h.until_done()
    assert done["state"] == "rolled_back" and done["step"] == 1
    assert f"gate {gate} failed" in done["reason"] and fragment in done["reason"], done["reason"]
    (failed,) = [g for g in done["evaluation"] if g["verdict"] == FAIL]
    assert failed["gate"] == gate
    traffic_now = h.registry.get_model("m").traffic
    assert traffic_now is not None and dict(traffic_now.weights) == {1: 100}
    assert traffic_now.shadows == ()
    assert h.registry.get_model("m").labels == {}


TINY, AMPLE = 1e-6, 0.1
"""Wait limits a caller may set: far below the stable version's 2 ms median, and above it."""


@pytest.mark.parametrize(
    ("code", "pinned", "limit_s", "ran", "state"),
    [
        # A pinned deadline no version meets, the request never run: the caller's choice.
        ("deadline_exceeded", True, TINY, False, "promoted"),
        # ... but a deadline the stable version meets, the candidate's queue policy default
        # (no caller limit), a request that ran (its batch failed), or routed traffic: counted.
        ("deadline_exceeded", True, AMPLE, False, "rolled_back"),
        ("deadline_exceeded", True, None, False, "rolled_back"),
        ("deadline_exceeded", True, TINY, True, "rolled_back"),
        ("deadline_exceeded", False, TINY, False, "rolled_back"),
        # A full line is shared with routed requests: a pinned flood's 429s count.
        ("overloaded", True, TINY, False, "rolled_back"),
        ("internal", True, TINY, False, "rolled_back"),
        ("invalid_argument", True, None, True, "rolled_back"),
    ],
)
async def test_pinned_deadlines_shorter_than_the_stable_versions_median_are_left_out(
    code: str, pinned: bool, limit_s: float | None, ran: bool, state: str
) -> None:
    h = Harness()
    h.traffic.per_poll = {"1": (10, 0, 2.0), "2": (10, 3, 2.0)}
    h.traffic.error_code, h.traffic.errors_pinned = code, pinned
    h.traffic.errors_limit_s, h.traffic.errors_ran = limit_s, ran
    await h.controller.start("m", PLAN)
    done = await h.until_done()
    assert done["state"] == state, done["reason"]
    if state == "rolled_back":
        assert "gate error_rate failed: candidate 30.00%" in done["reason"]


@pytest.mark.parametrize(("limit_s", "state"), [(AMPLE, "rolled_back"), (TINY, "promoted")])
async def test_at_100_percent_pinned_deadlines_are_judged_on_the_step_befores_median(
    limit_s: float, state: str
) -> None:
    """At 100% the stable version serves nothing: the median of the step before (kept in the
    baseline, which a restart reads back) judges the candidate's pinned expiries."""

    class FullStep(Harness):
        async def sleep(self, seconds: float) -> None:
            rollout = self.controller.active("m")
            if rollout is not None and rollout.step == 1:  # 100%: the candidate alone
                self.traffic.per_poll = {"2": (10, 3, 2.0)}
                self.traffic.error_code, self.traffic.errors_pinned = "deadline_exceeded", True
                self.traffic.errors_limit_s = limit_s
            await super().sleep(seconds)

    h = FullStep()
    h.traffic.per_poll = GOOD
    await h.controller.start("m", {**PLAN, "steps": [50, 100]})
    done = await h.until_done()
    assert done["state"] == state, done["reason"]
    assert done["baseline"]["p50_ms"] == 2.0
    assert Rollout.from_document("m", done).baseline.p50_ms == 2.0  # type: ignore[union-attr]


async def test_disagreeing_shadow_answers_roll_back() -> None:
    h = Harness()
    h.traffic.per_poll = GOOD
    h.traffic.agree, h.traffic.disagree = 8, 2  # 80% < 95%
    await h.controller.start("m", PLAN)
    done = await h.until_done()
    assert done["state"] == "rolled_back" and "gate agreement failed: 80.00%" in done["reason"]


async def test_agreement_counts_only_comparisons_since_the_step_began() -> None:
    h = Harness()
    pair = h.shadows.pair("m", 1, 2)
    pair.disagree = 1000  # before the rollout: not its business
    h.traffic.per_poll = GOOD
    h.traffic.agree = 1
    await h.controller.start("m", PLAN)
    assert (await h.until_done())["state"] == "promoted"


async def test_accuracy_gate_needs_enough_feedback_then_judges() -> None:
    h = Harness()
    h.traffic.per_poll = GOOD
    h.feedback.figures = [FakeAccuracy("1", 100, 0.95), FakeAccuracy("2", 10, 0.5)]
    await h.controller.start("m", {**PLAN, "gates": {"min_feedback": 50}})
    status = await _after_polls(h, 3)
    (accuracy,) = [g for g in status["evaluation"] if g["gate"] == "accuracy"]
    assert accuracy["verdict"] == SKIPPED and "not enough feedback" in accuracy["detail"]
    h.feedback.figures = [FakeAccuracy("1", 100, 0.95), FakeAccuracy("2", 60, 0.90)]
    done = await h.until_done()
    assert done["state"] == "rolled_back" and "gate accuracy failed" in done["reason"]


async def _after_polls(h: Harness, polls: int) -> dict[str, Any]:
    start = h.now
    await h.until(lambda: h.now >= start + polls * 0.5)
    return h.controller.status("m")


async def test_too_few_requests_hold_the_step_and_say_so() -> None:
    h = Harness()
    h.traffic.per_poll = {"1": (10, 0, 2.0)}  # the candidate gets nothing
    await h.controller.start("m", PLAN)
    await h.until(lambda: h.controller.status("m")["state"] == "holding")
    status = h.controller.status("m")
    assert h.now >= 100 and "holding: version 2 answered 0 of the 20 requests" in status["reason"]
    assert h.lifecycle.saved[("m", "rollout")]["state"] == "holding"
    h.traffic.per_poll = GOOD  # requests come: the step is judged, the rollout goes on
    done = await h.until_done()
    assert done["state"] == "promoted"
    assert any(item["reason"].startswith("running again") for item in done["history"])


async def test_abort_puts_the_stable_version_back() -> None:
    h = Harness()
    h.traffic.per_poll = GOOD
    await h.controller.start("m", PLAN)
    await _after_polls(h, 30)
    answer = await h.controller.abort("m")
    assert answer["state"] == "aborted" and answer["reason"] == "aborted on request"
    traffic = h.registry.get_model("m").traffic
    assert traffic is not None and dict(traffic.weights) == {1: 100}
    assert h.controller.active("m") is None
    with pytest.raises(InvalidInputError, match=r"no rollout running.*aborted"):
        await h.controller.abort("m")
    assert h.controller.outcomes[("m", "aborted")] == 1


async def test_one_rollout_per_model_and_the_plan_is_checked() -> None:
    h = Harness(versions=(1, 2, 3))
    await h.controller.start("m", PLAN)
    with pytest.raises(InvalidInputError, match="already running"):
        await h.controller.start("m", {"to": "3"})
    await h.controller.abort("m")
    with pytest.raises(InvalidInputError, match=r"version 7 .* unknown"):
        await h.controller.start("m", {"to": "7"})
    with pytest.raises(NotFoundError):
        await h.controller.start("nope", {"to": "2"})
    with pytest.raises(NotFoundError, match="no rollout"):
        Harness().controller.status("m")
    # Default "from": the stable label, else the policy's primary, else the latest other.
    assert (await h.controller.start("m", {"to": "3"}))["from"] == "1"  # the abort's policy
    await h.controller.abort("m")
    h.registry.get_model("m").traffic = None
    assert (await h.controller.start("m", {"to": "2"}))["from"] == "3"
    await h.controller.abort("m")
    h.registry.set_label("m", "stable", "1")
    assert (await h.controller.start("m", {"to": "3"}))["from"] == "1"


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({}, '"to"'),
        ({"to": "x"}, '"to" must be a version number'),
        ({"to": "2", "from": "2"}, "both version 2"),
        ({"to": "2", "steps": [5, 1, 100]}, "must increase"),
        ({"to": "2", "steps": [1, 50]}, "end at 100"),
        ({"to": "2", "steps": [0, 100]}, '"steps"[0]'),
        ({"to": "2", "step_interval_s": 0}, "positive"),
        ({"to": "2", "min_requests": -1}, '"min_requests"'),
        ({"to": "2", "shadow_percent": 101}, '"shadow_percent"'),
        ({"to": "2", "gates": {"max_p99_ratio": 0.5}}, "max_p99_ratio"),
        ({"to": "2", "gates": {"colour": 1}}, "unknown gate"),
        ({"to": "2", "speed": 1}, "unknown field"),
        ([1], "JSON object"),
    ],
)
def test_plans_are_checked_field_by_field(document: Any, fragment: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_plan(document, lambda _: 1)
    assert fragment in caught.value.message


def test_each_gate_on_its_own() -> None:
    gates = Gates()
    same = Figures(100, 0, 2.0)
    results = evaluate(gates, same, same, (0, 0), (None, None))
    assert [(r.gate, r.verdict) for r in results] == [
        ("error_rate", PASS),
        ("p99_latency", PASS),
        ("agreement", SKIPPED),
        ("accuracy", SKIPPED),
    ]
    # Below the noise floor a ratio alone does not fail: 0.1 ms vs 0.3 ms.
    (_, latency, _, _) = evaluate(
        gates, Figures(100, 0, 0.3), Figures(100, 0, 0.1), (0, 0), (None, None)
    )
    assert latency.verdict == PASS and latency.figures["ratio"] == pytest.approx(3.0)
    (errors, _, agreement, accuracy) = evaluate(
        gates,
        Figures(100, 2, 2.0),
        Figures(100, 0, 2.0),
        (95, 5),
        (Accuracy(60, 0.9), Accuracy(60, 0.91)),
    )
    assert errors.verdict == FAIL and errors.figures["increase"] == pytest.approx(0.02)
    assert agreement.verdict == PASS and agreement.figures["agreement"] == pytest.approx(0.95)
    assert accuracy.verdict == PASS and accuracy.figures["drop"] == pytest.approx(0.01)


async def test_a_persisted_rollout_resumes_at_its_step() -> None:
    h = Harness()
    h.traffic.per_poll = GOOD
    await h.controller.start("m", {**PLAN, "steps": [10, 50, 100]})
    await h.until(lambda: h.controller.status("m")["step"] == 2)
    await h.controller.close()  # the gateway stops: the document stays "running"
    document = h.lifecycle.saved[("m", "rollout")]
    assert (document["state"], document["step"], document["weight"]) == ("running", 2, 50)

    h.registry.get_model("m").traffic = None  # a fresh process: nothing routed yet
    h.controller = h.make_controller()
    h.controller.model_restored("m", {"rollout": document})
    traffic = h.registry.get_model("m").traffic  # set at once, before any request
    assert traffic is not None and dict(traffic.weights) == {1: 50, 2: 50}
    assert h.controller.status("m")["state"] == "running"
    done = await h.until_done()
    assert done["state"] == "promoted"
    reasons = [item["reason"] for item in done["history"]]
    assert any(
        r == "resumed after a restart, its window anew: step 2 of 3: 50% to version 2"
        for r in reasons
    ), reasons
    # A finished rollout is shown, never resumed; a broken document is ignored.
    again = h.make_controller()
    again.model_restored("m", {"rollout": h.lifecycle.saved[("m", "rollout")]})
    assert again.status("m")["state"] == "promoted" and again.active("m") is None
    again.model_restored("m", {"rollout": {"state": "running"}})
    assert again.status("m")["state"] == "promoted"


async def test_an_unloaded_model_aborts_its_rollout() -> None:
    h = Harness()
    h.traffic.per_poll = GOOD
    await h.controller.start("m", PLAN)
    await h.controller.model_unloaded("m")
    assert h.controller.active("m") is None
    assert h.lifecycle.saved[("m", "rollout")]["state"] == "aborted"  # saved before it returns
    assert h.lifecycle.saved[("m", "traffic")]["weights"] == {"1": 100}
    await h.controller.close()


async def test_a_version_that_goes_away_aborts_the_rollout() -> None:
    h = Harness()
    h.traffic.per_poll = GOOD
    await h.controller.start("m", {**PLAN, "steps": [50, 100]})
    h.registry.get_model("m").versions[2].state = VersionState.DRAINING
    done = await h.until_done()
    assert done["state"] == "aborted" and "READY" in done["reason"]
    with pytest.raises(GatewayError):
        await h.controller.start("m", PLAN)


async def test_the_controller_observes_requests_only_from_its_first_rollout_on() -> None:
    h = Harness()
    telemetry = Telemetry()
    h.controller = RolloutController(
        h.lifecycle,  # type: ignore[arg-type]
        h.shadows,
        h.feedback,  # type: ignore[arg-type]
        clock=lambda: h.now,
        sleep=h.sleep,
        telemetry=telemetry,
    )
    assert telemetry.observers == ()  # a gateway without rollouts pays nothing per request
    await h.controller.start("m", PLAN)
    await h.controller.abort("m")
    await h.controller.start("m", PLAN)
    assert telemetry.observers == (h.controller,)
    await h.controller.close()
