"""Where one model's progressive rollout is: its plan, state, step, the step's window, its
history, and its persisted form (`<model>/rollout.json`, also what the REST API shows)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from gateway.core.rollout_plan import Figures, GateResult, RolloutPlan, Window, parse_plan
from gateway.core.traffic import Tolerance

RUNNING, HOLDING = "running", "holding"
PROMOTED, ROLLED_BACK, ABORTED = "promoted", "rolled_back", "aborted"
ACTIVE = frozenset({RUNNING, HOLDING})
STATES = (RUNNING, HOLDING, PROMOTED, ROLLED_BACK, ABORTED)
MAX_HISTORY = 200


class Rollout:
    """One model's rollout: its plan, where it is, the current step's window, its history."""

    def __init__(
        self,
        model: str,
        plan: RolloutPlan,
        *,
        sticky_key: str = "",
        tolerance: Tolerance | None = None,
    ) -> None:
        self.model = model
        self.plan = plan
        self.sticky_key = sticky_key
        self.tolerance = tolerance or Tolerance()
        self.state = RUNNING
        self.step = 0
        """Index into plan.steps."""
        self.reason = ""
        self.step_started_s = 0.0
        self.step_started_at = 0.0
        self.windows: dict[str, Window] = {}
        self.pair_at_start = (0, 0)
        self.evaluation: list[GateResult] = []
        self.baseline: Figures | None = None
        """The stable version's figures of the latest step it served (compared with at 100%)."""
        self.history: list[dict[str, Any]] = []
        self.lock = asyncio.Lock()

    @property
    def weight(self) -> int:
        return self.plan.steps[self.step]

    @property
    def last_step(self) -> bool:
        return self.step == len(self.plan.steps) - 1

    def window(self, version: int) -> Window:
        key = str(version)
        found = self.windows.get(key)
        if found is None:
            found = self.windows[key] = Window()
        return found

    def stable_median_s(self) -> float | None:
        """The stable version's median latency: this step's, else that of the latest step it
        served (the baseline, persisted); None before it answered any."""
        window = self.windows.get(str(self.plan.from_version))
        median_s = window.median_s() if window is not None else None
        if median_s is None and self.baseline is not None and self.baseline.p50_ms:
            return self.baseline.p50_ms / 1000.0
        return median_s

    def begin_step(self, now_s: float, now_at: float, pair: tuple[int, int]) -> None:
        self.step_started_s, self.step_started_at = now_s, now_at
        self.pair_at_start = pair
        self.windows = {}
        self.evaluation = []

    def note(self, at: float, reason: str) -> None:
        self.reason = reason
        self.history.append(
            {
                "at": at,
                "state": self.state,
                "step": self.step + 1,
                "weight": self.weight,
                "reason": reason,
            }
        )
        del self.history[:-MAX_HISTORY]

    def document(self) -> dict[str, Any]:
        """The REST form (and, with `pinned_versions`, the persisted one)."""
        baseline = self.baseline
        return {
            "model": self.model,
            "state": self.state,
            **self.plan.document(),
            "step": self.step + 1,
            "weight": self.weight,
            "step_started_at": self.step_started_at,
            "reason": self.reason,
            "evaluation": [result.document() for result in self.evaluation],
            "baseline": None
            if baseline is None
            else {
                "requests": baseline.requests,
                "errors": baseline.errors,
                "p99_ms": baseline.p99_ms,
                "p50_ms": baseline.p50_ms,
            },
            "sticky_key": self.sticky_key,
            "tolerance": {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol},
            "history": list(self.history),
        }

    @classmethod
    def from_document(cls, model: str, document: Mapping[str, Any]) -> Rollout:
        """A persisted rollout; InvalidInputError, KeyError, TypeError or ValueError if the
        document is not one."""
        plan_fields = {"to", "from", "steps", "step_interval_s", "min_requests", "shadow_percent"}
        plan = parse_plan(
            {k: v for k, v in document.items() if k in plan_fields | {"gates"}}, lambda _: None
        )
        tolerance = document.get("tolerance") or {}
        rollout = cls(
            model,
            plan,
            sticky_key=str(document.get("sticky_key", "")),
            tolerance=Tolerance(
                float(tolerance.get("atol", 1e-4)), float(tolerance.get("rtol", 1e-3))
            ),
        )
        state = document["state"]
        step = document["step"]
        if state not in STATES or not isinstance(step, int) or not 1 <= step <= len(plan.steps):
            raise ValueError(f"state {state!r} at step {step!r}")
        rollout.state, rollout.step = state, step - 1
        rollout.reason = str(document.get("reason", ""))
        rollout.step_started_at = float(document.get("step_started_at", 0.0))
        rollout.history = [dict(item) for item in document.get("history", [])][-MAX_HISTORY:]
        rollout.evaluation = [
            GateResult(str(g["gate"]), str(g["verdict"]), str(g["detail"]), dict(g["figures"]))
            for g in document.get("evaluation", [])
        ]
        baseline = document.get("baseline")
        if baseline:
            rollout.baseline = Figures(
                int(baseline["requests"]),
                int(baseline["errors"]),
                baseline.get("p99_ms"),
                baseline.get("p50_ms"),
            )
        return rollout
