"""Progressive rollouts: a candidate version takes a growing share of a model's routed traffic,
step by step, and is promoted or rolled back by itself on gates compared with the stable version.

One asyncio task per running rollout sets each step's weights through the lifecycle (so they
are persisted and name only READY versions), waits for the step interval and enough candidate
requests, and judges the step's window: error rate and p99 latency from the request events it
observes, shadow agreement from the ShadowDispatcher, accuracy from the FeedbackStore. Every
transition is logged, kept in the rollout's history, and persisted in `<model>/rollout.json`,
so a restart resumes a running rollout (its current step starts its window again).

Left out of the windows: shadow copies (judged by agreement), callers that left, requests every
version refuses (malformed: RequestEvent.refused_by_all), and a request pinned to a version (by
number or label) that expired in line, never run, under a wait limit its caller set shorter
than the stable version's median latency: a deadline the stable version misses more often than
it meets, which a caller chose for one version (a client pinning a 1 us `timeout` to the
candidate would roll it back). Routed requests all count: the policy sends both versions the
same mix of callers and deadlines. Every other outcome of a pinned request counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.core.errors import ErrorCode, GatewayError, InvalidInputError, NotFoundError
from gateway.core.feedback import FeedbackStore
from gateway.core.lifecycle import ModelLifecycle
from gateway.core.registry import ModelEntry
from gateway.core.rollout_plan import FAIL, Accuracy, GateResult, evaluate, parse_plan
from gateway.core.rollout_state import (
    ABORTED,
    ACTIVE,
    HOLDING,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    Rollout,
)
from gateway.core.shadow import ShadowDispatcher
from gateway.core.telemetry import OK, BatchEvent, RequestEvent, Telemetry
from gateway.core.traffic import Shadow, Tolerance, TrafficPolicy

logger = logging.getLogger("gateway.rollout")

DEADLINE_EXCEEDED = ErrorCode.DEADLINE_EXCEEDED.value
HOLD_AFTER_INTERVALS = 10
"""A step whose candidate has too few requests after this many intervals holds (and says so)."""
STABLE_LABEL = "stable"

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RolloutController:
    """The rollouts of one gateway: at most one running per model; the latest kept per model.

    An Observer of request events (each step's window), and a lifecycle listener (resume at
    load, abort at unload). `clock` and `sleep` are injectable, so tests run in no time."""

    def __init__(
        self,
        lifecycle: ModelLifecycle,
        shadows: ShadowDispatcher,
        feedback: FeedbackStore,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Clock = time.time,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._lifecycle = lifecycle
        self._telemetry = telemetry
        """Observed from the first rollout on (so a gateway without any costs nothing)."""
        self._registry = lifecycle.registry
        self._shadows = shadows
        self._feedback = feedback
        self._clock, self._sleep, self._wall = clock, sleep, wall_clock
        self._rollouts: dict[str, Rollout] = {}
        self._active: dict[str, Rollout] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self.outcomes: Counter[tuple[str, str]] = Counter()
        """(model, promoted | rolled_back | aborted) -> rollouts that ended so."""

    # -- Observer -------------------------------------------------------------------------
    def _observe(self) -> None:
        if self._telemetry is not None and self not in self._telemetry.observers:
            self._telemetry.add_observer(self)

    def request_finished(self, event: RequestEvent) -> None:
        rollout = self._active.get(event.model)
        if rollout is None or event.role == "shadow" or event.code == "cancelled":
            return  # shadow copies are judged by agreement; a caller that left judges nothing
        if event.refused_by_all:
            return  # malformed for both versions: the caller's fault, whichever version it met
        if event.code == DEADLINE_EXCEEDED and event.pinned and self._unmeetable(rollout, event):
            return  # a deadline its caller chose, too short for either version (docstring)
        window = rollout.windows.get(event.version)
        if window is None:
            plan = rollout.plan
            if event.version not in (str(plan.to), str(plan.from_version)):
                return
            window = rollout.window(int(event.version))
        window.record(event.code == OK, (event.ended_ns - event.started_ns) * 1e-9)

    def batch_finished(self, event: BatchEvent) -> None:
        return

    @staticmethod
    def _unmeetable(rollout: Rollout, event: RequestEvent) -> bool:
        """The request expired in line, never run, under a limit its caller set shorter than
        the stable version's median latency (Rollout.stable_median_s); unknown (the first
        step's first moments): the caller's choice has the benefit of the doubt."""
        limit_s = event.caller_limit_s
        if limit_s is None or event.timing.launched_ns:
            return False
        median_s = rollout.stable_median_s()
        return median_s is None or limit_s < median_s

    # -- what the API calls ---------------------------------------------------------------
    def rollouts(self) -> list[Rollout]:
        return [self._rollouts[name] for name in sorted(self._rollouts)]

    def active(self, name: str) -> Rollout | None:
        return self._active.get(name)

    def status(self, name: str) -> dict[str, Any]:
        """The model's latest rollout; a running one with its gates judged on the window so far."""
        rollout = self._rollouts.get(name)
        if rollout is None:
            self._registry.get_model(name)  # NotFoundError for an unknown model
            raise NotFoundError(f"model '{name}' has no rollout")
        if rollout.state in ACTIVE:
            rollout.evaluation = self._evaluate(rollout)
        return rollout.document()

    async def start(self, name: str, document: object) -> dict[str, Any]:
        """Start a rollout: its first step's weights are set before this returns."""
        entry = self._registry.get_model(name)
        running = self._active.get(name)
        if running is not None:
            raise InvalidInputError(
                f"a rollout of model '{name}' is already {running.state} (version "
                f"{running.plan.from_version} to {running.plan.to}, step {running.step + 1}); "
                "abort it first"
            )
        plan = parse_plan(document, lambda to: _default_from(entry, to))
        for number in (plan.from_version, plan.to):
            version = entry.versions.get(number)
            if version is None or not version.ready:
                state = "unknown" if version is None else version.state.name
                raise InvalidInputError(
                    f"version {number} of model '{name}' is {state}; a rollout needs READY versions"
                )
        policy = entry.traffic
        rollout = Rollout(
            name,
            plan,
            sticky_key=policy.sticky_key if policy is not None else "",
            tolerance=policy.tolerance if policy is not None else Tolerance(),
        )
        previous = self._rollouts.get(name)
        self._observe()
        self._rollouts[name] = self._active[name] = rollout
        try:
            async with rollout.lock:
                await self._begin_step(rollout, "started")
        except BaseException:
            self._active.pop(name, None)
            if previous is None:
                self._rollouts.pop(name, None)
            else:
                self._rollouts[name] = previous
            raise
        logger.info(
            "model %s: rollout of version %d from version %d started, steps %s",
            name,
            plan.to,
            plan.from_version,
            list(plan.steps),
        )
        if self._active.get(name) is rollout and rollout.state in ACTIVE:  # not unloaded
            self._launch(rollout, begin=False)  # meanwhile
        return rollout.document()

    async def abort(self, name: str, reason: str = "aborted on request") -> dict[str, Any]:
        """Stop the running rollout: the stable version takes all the traffic again."""
        rollout = self._active.get(name)
        if rollout is not None:
            async with rollout.lock:
                if rollout.state in ACTIVE:
                    await self._stop_task(name)
                    await self._finish(rollout, ABORTED, reason, rollout.plan.from_version)
                    return rollout.document()
        self._registry.get_model(name)
        last = self._rollouts.get(name)
        raise InvalidInputError(
            f"model '{name}' has no rollout running"
            + ("" if last is None else f" (the latest one is {last.state})")
        )

    # -- lifecycle listener ---------------------------------------------------------------
    def model_restored(self, name: str, documents: Mapping[str, Any]) -> None:
        """At a model's first load: its persisted rollout, resumed if it was running."""
        if name in self._active:
            return
        document = documents.get("rollout")
        if not isinstance(document, dict):
            return
        ended = self._rollouts.get(name)
        if ended is not None and ended.state not in ACTIVE:
            # This process ended it: what the load read from disk may be older than that (a
            # repository that cannot be written keeps the state in memory only), so it must
            # not resume, nor its step's traffic come back.
            if document.get("state") in ACTIVE:
                serving = ended.plan.to if ended.state == PROMOTED else ended.plan.from_version
                with contextlib.suppress(GatewayError):
                    self._registry.set_traffic(name, self._fallback_policy(ended, serving))
            return
        try:
            rollout = Rollout.from_document(name, document)
        except (GatewayError, KeyError, TypeError, ValueError, AttributeError) as exc:
            logger.warning("model %s: the saved rollout is invalid and ignored: %s", name, exc)
            return
        self._rollouts[name] = rollout
        if rollout.state not in ACTIVE:
            return
        self._observe()
        self._active[name] = rollout
        try:  # at once, so no request is routed without the step's weights
            self._registry.set_traffic(name, self._policy(rollout))
        except GatewayError as exc:
            logger.warning("model %s: the rollout cannot resume yet: %s", name, exc.message)
        logger.info(
            "model %s: resuming the rollout of version %d at step %d (%d%%)",
            name,
            rollout.plan.to,
            rollout.step + 1,
            rollout.weight,
        )
        self._launch(rollout, begin=True)

    async def model_unloaded(self, name: str) -> None:
        """An unload on request (or the model leaving the repository) aborts its rollout; the
        aborted state and the stable version's traffic are saved before this returns (under
        the model's lock: a load right after reads them, not the step's)."""
        rollout = self._active.pop(name, None)
        if rollout is None:
            return
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
        rollout.state = ABORTED
        rollout.note(self._wall(), "aborted: the model was unloaded")
        self.outcomes[(name, ABORTED)] += 1
        logger.warning("model %s: rollout of version %d aborted: unloaded", name, rollout.plan.to)
        # After a later load the stable version serves, as after any abort.
        fallback = self._fallback_policy(rollout, rollout.plan.from_version).document()
        await self._lifecycle.save_document(name, "traffic", fallback)
        await self._persist(rollout)

    async def close(self) -> None:
        """Stop driving rollouts (at shutdown): their persisted state resumes at the next start.
        A transition under way (weights set, state saved) completes first."""
        self._closed = True
        for name, rollout in list(self._active.items()):
            async with rollout.lock:
                await self._stop_task(name)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    # -- the task of one rollout ----------------------------------------------------------
    def _launch(self, rollout: Rollout, *, begin: bool) -> None:
        if self._closed:  # stopping (a load still finishing): the next start resumes it
            return
        task = asyncio.create_task(self._run(rollout, begin))
        self._tasks[rollout.model] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(rollout.model) is done:
                del self._tasks[rollout.model]

        task.add_done_callback(forget)

    async def _stop_task(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self, rollout: Rollout, begin: bool) -> None:
        try:
            await self._drive(rollout, begin)
        except asyncio.CancelledError:
            raise
        except GatewayError as exc:
            async with rollout.lock:
                if rollout.state in ACTIVE:
                    await self._finish(
                        rollout, ABORTED, f"aborted: {exc.message}", rollout.plan.from_version
                    )
        except Exception:
            logger.exception("model %s: rollout failed", rollout.model)
            async with rollout.lock:
                if rollout.state in ACTIVE:
                    await self._finish(
                        rollout,
                        ABORTED,
                        "aborted: unexpected error (see the gateway log)",
                        rollout.plan.from_version,
                    )

    async def _drive(self, rollout: Rollout, begin: bool) -> None:
        plan = rollout.plan
        if begin:
            async with rollout.lock:
                await self._begin_step(rollout, "resumed after a restart, its window anew")
        while True:
            await self._wait_for_evidence(rollout)
            if rollout.state not in ACTIVE or self._active.get(rollout.model) is not rollout:
                return  # aborted or unloaded meanwhile
            async with rollout.lock:
                results = rollout.evaluation = self._evaluate(rollout)
                failed = [result for result in results if result.verdict == FAIL]
                if failed:
                    reason = "rolled back: " + "; ".join(
                        f"gate {result.gate} failed: {result.detail}" for result in failed
                    )
                    await self._finish(rollout, ROLLED_BACK, reason, plan.from_version)
                    return
                stable = rollout.window(plan.from_version).figures()
                if stable.requests:
                    rollout.baseline = stable
                if rollout.last_step:
                    await self._promote(rollout)
                    return
                verdicts = ", ".join(f"{result.gate} {result.verdict}" for result in results)
                rollout.note(
                    self._wall(),
                    f"step {rollout.step + 1} ({rollout.weight}%) passed: {verdicts}",
                )
                rollout.step += 1
                await self._begin_step(rollout, "")

    async def _begin_step(self, rollout: Rollout, why: str) -> None:
        policy = self._policy(rollout)
        # Saved without the candidate's shadow (a policy file may not copy requests to a
        # version that takes some itself); a restart resumes the rollout, which adds it again.
        persisted = dataclasses.replace(policy, shadows=()) if policy.shadows else None
        still_active = functools.partial(self._is_active, rollout)
        # An unload may end the rollout before the weights are set (they must not be), or
        # after it, before this goes on (the unload has undone them): it stays aborted.
        set_now = await self._lifecycle.set_traffic(rollout.model, policy, persisted, still_active)
        if not set_now or not still_active():
            return
        rollout.begin_step(self._clock(), self._wall(), self._pair_counts(rollout))
        rollout.state = RUNNING
        what = (
            f"step {rollout.step + 1} of {len(rollout.plan.steps)}: {rollout.weight}% to "
            f"version {rollout.plan.to}"
        )
        rollout.note(rollout.step_started_at, f"{why}: {what}" if why else what)
        await self._persist(rollout)

    async def _wait_for_evidence(self, rollout: Rollout) -> None:
        """Until the interval passed and the candidate answered enough requests in this step;
        holding (and saying so) when they do not come in HOLD_AFTER_INTERVALS intervals."""
        plan = rollout.plan
        poll_s = min(1.0, max(0.005, plan.step_interval_s / 20))
        while True:
            await self._sleep(poll_s)
            elapsed_s = self._clock() - rollout.step_started_s
            served = rollout.window(plan.to).requests
            if elapsed_s >= plan.step_interval_s and served >= plan.min_requests:
                if rollout.state == HOLDING:
                    async with rollout.lock:
                        rollout.state = RUNNING
                        rollout.note(self._wall(), f"running again: {served} requests in the step")
                        await self._persist(rollout)
                return
            if (
                rollout.state == RUNNING
                and elapsed_s >= HOLD_AFTER_INTERVALS * plan.step_interval_s
            ):
                async with rollout.lock:
                    rollout.state = HOLDING
                    reason = (
                        f"holding: version {plan.to} answered {served} of the {plan.min_requests} "
                        f"requests step {rollout.step + 1} needs in {elapsed_s:.0f} s; the step "
                        "is judged when they come (or abort it)"
                    )
                    rollout.note(self._wall(), reason)
                    logger.warning("model %s: rollout %s", rollout.model, reason)
                    await self._persist(rollout)

    def _evaluate(self, rollout: Rollout) -> list[GateResult]:
        plan = rollout.plan
        candidate = rollout.window(plan.to).figures()
        stable = rollout.window(plan.from_version).figures()
        if not stable.requests and rollout.baseline is not None:
            stable = rollout.baseline  # at 100% the stable version serves nothing
        agree, disagree = self._pair_counts(rollout)
        agree0, disagree0 = rollout.pair_at_start
        accuracy = (
            self._accuracy(rollout.model, plan.to),
            self._accuracy(rollout.model, plan.from_version),
        )
        return evaluate(
            plan.gates, candidate, stable, (agree - agree0, disagree - disagree0), accuracy
        )

    def _pair_counts(self, rollout: Rollout) -> tuple[int, int]:
        plan = rollout.plan
        pair = self._shadows.pairs.get((rollout.model, str(plan.from_version), str(plan.to)))
        return (0, 0) if pair is None else (pair.agree, pair.disagree)

    def _accuracy(self, model: str, version: int) -> Accuracy | None:
        for figures in self._feedback.snapshot(model):
            if figures.version == str(version):
                return Accuracy(figures.window_observations, figures.window_accuracy)
        return None

    # -- ends -----------------------------------------------------------------------------
    async def _promote(self, rollout: Rollout) -> None:
        plan = rollout.plan
        await self._lifecycle.set_label(rollout.model, STABLE_LABEL, str(plan.to))
        await self._finish(
            rollout,
            PROMOTED,
            f"promoted: every step passed; label '{STABLE_LABEL}' points at version {plan.to}",
            plan.to,
        )

    async def _finish(self, rollout: Rollout, state: str, reason: str, serving: int) -> None:
        """End the rollout: `serving` takes all the routed traffic, shadows removed. Shielded:
        once begun, the transition completes (weights set, state saved) even if the caller
        is cancelled, so a rollout is never left half ended."""
        await asyncio.shield(self._end(rollout, state, reason, serving))

    async def _end(self, rollout: Rollout, state: str, reason: str, serving: int) -> None:
        name = rollout.model
        try:
            if not await self._lifecycle.set_traffic(
                name,
                self._fallback_policy(rollout, serving),
                when=functools.partial(self._is_active, rollout),
            ):
                return  # an unload ended it first (and counted, noted and saved that)
        except GatewayError as exc:
            reason += f" (the traffic policy could not be set: {exc.message})"
            logger.error("model %s: %s", name, exc.message)
        rollout.state = state
        rollout.note(self._wall(), reason)
        self.outcomes[(name, state)] += 1
        log = logger.info if state == PROMOTED else logger.warning
        log("model %s: rollout of version %d %s", name, rollout.plan.to, reason)
        await self._persist(rollout)
        if self._active.get(name) is rollout:
            del self._active[name]

    def _is_active(self, rollout: Rollout) -> bool:
        """`rollout` is still the model's running one (no unload or other end overtook it)."""
        return self._active.get(rollout.model) is rollout

    def _policy(self, rollout: Rollout) -> TrafficPolicy:
        """The weights of the current step; below 100% the candidate also shadows the stable
        version's requests, so agreement is measured on the same inputs."""
        plan = rollout.plan
        weight = rollout.weight
        weights = {plan.from_version: 100 - weight, plan.to: weight}
        shadows: tuple[Shadow, ...] = ()
        if weight < 100 and plan.shadow_percent > 0:
            shadows = (Shadow(plan.to, plan.shadow_percent),)
        return TrafficPolicy(weights, rollout.sticky_key, shadows, rollout.tolerance)

    @staticmethod
    def _fallback_policy(rollout: Rollout, serving: int) -> TrafficPolicy:
        return TrafficPolicy({serving: 100}, rollout.sticky_key, (), rollout.tolerance)

    async def _persist(self, rollout: Rollout) -> None:
        document = rollout.document()
        if rollout.state in ACTIVE:  # the lifecycle keeps these loaded across a restart
            document["pinned_versions"] = [rollout.plan.from_version, rollout.plan.to]
        await self._lifecycle.save_document(rollout.model, "rollout", document)


def _default_from(entry: ModelEntry, to: int) -> int | None:
    """The version `stable` points at, else the traffic policy's primary, else the latest READY
    version other than `to`."""
    stable = entry.labels.get(STABLE_LABEL)
    if stable is not None and stable != to:
        return stable
    if entry.traffic is not None and entry.traffic.primary != to:
        return entry.traffic.primary
    others = [v.version for v in entry.ready_versions() if v.version != to]
    return others[-1] if others else None
