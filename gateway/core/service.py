"""The one use-case API both adapters call: health, metadata and inference."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy.typing as npt

from gateway.core.admin import AdminAuthorizer, AdminCall, Admitted, audit
from gateway.core.callers import Callers
from gateway.core.errors import (
    GatewayError,
    InvalidInputError,
    UnavailableError,
    UnimplementedError,
)
from gateway.core.feedback import FeedbackStore
from gateway.core.lifecycle import LoadResult, ModelLifecycle
from gateway.core.model import LoadedVersion, ModelSignature
from gateway.core.ports import SourceError
from gateway.core.prediction import parse_label
from gateway.core.registry import ModelEntry, ModelRegistry, ModelVersion, VersionState
from gateway.core.rollout import STABLE_LABEL, RolloutController
from gateway.core.shadow import PairStatistics, ShadowDispatcher
from gateway.core.statistics import VersionStatistics
from gateway.core.telemetry import OK, RequestEvent, RequestTiming
from gateway.core.traffic import TrafficPolicy, parse_policy
from gateway.core.types import InferRequest, InferResponse, RequestContext, Tensor
from gateway.core.validation import validate_request

logger = logging.getLogger(__name__)

SERVER_NAME = "inference-gateway"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One line of the repository index."""

    name: str
    version: int | None
    state: VersionState
    reason: str


class InferenceService:
    """Resolves the target version, validates, hands the request to its batcher, answers."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        version: str,
        lifecycle: ModelLifecycle | None = None,
        authorizer: AdminAuthorizer | None = None,
        feedback: FeedbackStore | None = None,
        shadows: ShadowDispatcher | None = None,
        rollouts: RolloutController | None = None,
    ) -> None:
        self.registry = registry
        self.version = version
        self.lifecycle = lifecycle
        self.authorizer = authorizer or AdminAuthorizer()
        self.feedback = feedback if feedback is not None else FeedbackStore()
        self.shadows = shadows if shadows is not None else ShadowDispatcher(registry.telemetry)
        self.rollouts = rollouts
        self.callers = Callers()
        """Who calls for inference now (the front ends keep it): RequestContext.solo."""
        self._accepting = False

    # -- health -------------------------------------------------------------------------
    def start_accepting(self) -> None:
        self._accepting = True

    def stop_accepting(self) -> None:
        self._accepting = False

    @property
    def live(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        """Ready when accepting requests and every model that was not unloaded on request has
        at least one READY version."""
        models = self.registry.models()
        return self._accepting and all(e.ready_versions() for e in models if not e.unloaded)

    def model_ready(self, name: str, version: str) -> bool:
        try:
            self.registry.resolve(name, version)
        except UnavailableError:
            return False
        return True

    # -- metadata -----------------------------------------------------------------------
    def statistics(self, name: str, version: str) -> list[tuple[str, int, VersionStatistics]]:
        """Statistics of every ready version ('' name: of every model; '' version: of every
        version of the model)."""
        if version:
            target = self.registry.resolve(name, version)
            assert target.batcher is not None
            return [(target.name, target.version, target.batcher.statistics)]
        entries = [self.registry.get_model(name)] if name else self.registry.models()
        return [
            (v.name, v.version, v.batcher.statistics)
            for entry in entries
            for v in entry.ready_versions()
            if v.batcher is not None
        ]

    async def repository_index(self, ready_only: bool) -> list[IndexEntry]:
        """Every model of the repository and every version the gateway knows, with its state
        and why it is not ready; a model that failed before any version was known, or that
        was never loaded, appears once, without a version."""
        index: list[IndexEntry] = []
        known = set()
        for entry in self.registry.models():
            known.add(entry.name)
            if entry.error and not entry.versions and not ready_only:
                index.append(IndexEntry(entry.name, None, VersionState.FAILED, entry.error))
            for number, version in sorted(entry.versions.items()):
                if ready_only and not version.ready:
                    continue
                index.append(IndexEntry(entry.name, number, version.state, version.reason))
        if self.lifecycle is not None and not ready_only:
            try:
                names = await self.lifecycle.model_names()
            except SourceError as exc:  # what is loaded is still known: answer with that
                logger.warning("repository index without the models not loaded: %s", exc)
                names = []
            for name in names:
                if name not in known:
                    index.append(IndexEntry(name, None, VersionState.UNLOADED, "not loaded"))
            index.sort(key=lambda item: (item.name, item.version or 0))
        return index

    # -- admin --------------------------------------------------------------------------
    def admit(self, call: AdminCall, action: str, target: str) -> Admitted:
        """The first step of every admin call, before its body is even read: the token."""
        return self.authorizer.admit(call, action, target)

    async def _admin(
        self, caller: Admitted, action: str, target: str, work: Callable[[], Awaitable[T]]
    ) -> T:
        """Run and audit one admitted admin action."""
        try:
            if self.lifecycle is None:
                raise UnimplementedError("this server has no model repository to manage")
            result = await work()
        except GatewayError as error:
            audit(caller.who, caller.peer, action, target, f"failed: {error.message}")
            raise
        audit(caller.who, caller.peer, action, target, f"ok {_summary(result)}".rstrip())
        return result

    async def load_model(
        self, caller: Admitted, name: str, parameters: Mapping[str, Any]
    ) -> LoadResult:
        """Triton's repository load: parameters `config` (a JSON model config that replaces
        config.pbtxt for this load) and `reload` (ours: reload versions even if unchanged)."""

        async def work() -> LoadResult:
            assert self.lifecycle is not None
            config = parameters.get("config")
            if config is not None and not isinstance(config, str):
                raise InvalidInputError("parameter 'config' must be a string holding JSON")
            files = sorted(key for key in parameters if key.startswith("file:"))
            if files:
                raise UnimplementedError(
                    f"load parameters {', '.join(files)}: file overrides are not supported; "
                    "put the files in the model repository"
                )
            reload = parameters.get("reload", False)
            if not isinstance(reload, bool):
                raise InvalidInputError("parameter 'reload' must be true or false")
            result = await self.lifecycle.load(name, config or None, reload)
            if result.failures:
                reasons = "; ".join(
                    f"version {f.version}: {f.reason}" if f.version else f.reason
                    for f in result.failures
                )
                loaded = (  # first: a long reason is cut from the end of the message
                    f" (loaded and serving: version(s) {', '.join(map(str, result.loaded))})"
                    if result.loaded
                    else ""
                )
                raise InvalidInputError(f"failed to load '{name}'{loaded}: {reasons}")
            return result

        return await self._admin(caller, "load", name, work)

    async def unload_model(self, caller: Admitted, name: str) -> LoadResult:
        async def work() -> LoadResult:
            assert self.lifecycle is not None
            return await self.lifecycle.unload(name)

        return await self._admin(caller, "unload", name, work)

    def traffic(self, name: str) -> TrafficPolicy | None:
        return self.registry.get_model(name).traffic

    async def set_traffic(self, caller: Admitted, name: str, document: object) -> TrafficPolicy:
        async def work() -> TrafficPolicy:
            assert self.lifecycle is not None
            policy = parse_policy(document)
            await self.lifecycle.set_traffic(
                name, policy, check=lambda: self._no_rollout_running(name)
            )
            return policy

        weights = document.get("weights") if isinstance(document, dict) else None
        return await self._admin(caller, "traffic", f"{name} weights={weights}", work)

    async def clear_traffic(self, caller: Admitted, name: str) -> None:
        async def work() -> None:
            assert self.lifecycle is not None
            await self.lifecycle.set_traffic(
                name, None, check=lambda: self._no_rollout_running(name)
            )

        await self._admin(caller, "traffic", f"{name} cleared", work)

    # -- rollouts -----------------------------------------------------------------------
    def _no_rollout_running(self, name: str, owns: str = "sets its traffic policy") -> None:
        """Refuse a change to what a running rollout of the model `owns`: it would undo the
        change at its next step or when it ends."""
        running = self.rollouts.active(name) if self.rollouts is not None else None
        if running is not None:
            raise InvalidInputError(
                f"a rollout of model '{name}' is {running.state} and {owns}; abort it first"
            )

    def _rollout_controller(self) -> RolloutController:
        if self.rollouts is None:
            raise UnimplementedError("this server has no model repository to manage")
        return self.rollouts

    def rollout(self, name: str) -> dict[str, Any]:
        """The model's latest rollout (NOT_FOUND when it never had one)."""
        return self._rollout_controller().status(name)

    async def start_rollout(self, caller: Admitted, name: str, document: object) -> dict[str, Any]:
        async def work() -> dict[str, Any]:
            return await self._rollout_controller().start(name, document)

        to = document.get("to") if isinstance(document, dict) else None
        return await self._admin(caller, "rollout", f"{name} to={to}", work)

    async def abort_rollout(self, caller: Admitted, name: str) -> dict[str, Any]:
        async def work() -> dict[str, Any]:
            return await self._rollout_controller().abort(name)

        return await self._admin(caller, "rollout", f"{name} aborted", work)

    # -- end rollouts -------------------------------------------------------------------

    def shadow_figures(self, name: str) -> list[tuple[str, str, PairStatistics]]:
        """(primary version, shadow version, figures) of the model's shadow comparisons."""
        self.registry.get_model(name)
        return [
            (primary, shadow, figures)
            for (model, primary, shadow), figures in sorted(self.shadows.pairs.items())
            if model == name
        ]

    def labels(self, name: str) -> dict[str, int]:
        return dict(sorted(self.registry.get_model(name).labels.items()))

    async def set_label(
        self, caller: Admitted, name: str, label: str, version: str
    ) -> dict[str, int]:
        async def work() -> dict[str, int]:
            assert self.lifecycle is not None
            return await self.lifecycle.set_label(
                name, label, version, check=lambda: self._no_rollout_moving(name, label)
            )

        return await self._admin(caller, "label", f"{name}/{label}={version}", work)

    async def delete_label(self, caller: Admitted, name: str, label: str) -> dict[str, int]:
        async def work() -> dict[str, int]:
            assert self.lifecycle is not None
            return await self.lifecycle.delete_label(
                name, label, check=lambda: self._no_rollout_moving(name, label)
            )

        return await self._admin(caller, "unlabel", f"{name}/{label}", work)

    def _no_rollout_moving(self, name: str, label: str) -> None:
        if label == STABLE_LABEL:  # the rollout moves it to its candidate when it promotes
            self._no_rollout_running(name, f"points label '{STABLE_LABEL}' when it promotes")

    def ready_version_names(self, name: str) -> list[str]:
        return [str(v.version) for v in self.registry.get_model(name).ready_versions()]

    def loaded_version(self, name: str, version: str) -> LoadedVersion:
        found = self.registry.resolve(name, version)
        assert found.loaded is not None
        return found.loaded

    # -- inference ----------------------------------------------------------------------
    def _count_refused(
        self, request: InferRequest, ctx: RequestContext, error: GatewayError
    ) -> None:
        """A request refused before a version was chosen (no ready version, an unknown label)
        still counts in the request metrics, with version '': a model that serves nothing
        must not look healthy. A model name the gateway does not know counts as model '', one
        series however many names clients send."""
        model = request.model_name if self.registry.knows(request.model_name) else ""
        now_ns = time.perf_counter_ns()
        event = RequestEvent(
            model, "", "primary", ctx.protocol, error.code.value, now_ns, now_ns, 0,
            RequestTiming(), request.id, error.message,
        )  # fmt: skip
        self.registry.telemetry.request_finished(event, None)

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        if not self._accepting:
            raise UnavailableError("the server is shutting down")
        entry, policy, key = None, None, None
        try:
            if request.model_version:  # a pinned version or label bypasses the traffic policy
                target, role = (
                    self.registry.resolve(request.model_name, request.model_version),
                    "primary",
                )
            else:
                entry = self.registry.get_model(request.model_name)
                policy = entry.traffic
                key = _routing_key(request, ctx, policy)
                target, role = self.registry.route(entry, key)
        except GatewayError as refused:
            self._count_refused(request, ctx, refused)
            raise
        loaded, batcher = target.loaded, target.batcher
        assert loaded is not None and batcher is not None
        started_ns = time.perf_counter_ns()
        telemetry = self.registry.telemetry
        tracing = telemetry.tracing
        trace = None
        if tracing is not None:
            try:
                trace = tracing.begin(ctx.traceparent, ctx.tracestate, request.model_name, role)
            except Exception:  # tracing must never fail a request
                logger.exception("tracing failed to start a request span")
        timing = RequestTiming()
        rows = 0
        code, error = OK, ""
        refused_by_all = False
        queueing: _Queueing | None = None
        answer: asyncio.Future[Sequence[Tensor] | None] | None = None
        target.acquire()  # an unload or swap waits for this request
        try:
            try:
                _check_parameters(request)
            except InvalidInputError:
                refused_by_all = True  # malformed the same for every version
                raise
            try:
                feeds, output_names, batch_size = validate_request(request, loaded.signature)
            except InvalidInputError:
                refused_by_all = self._refused_by_the_others(request, target, entry)
                raise
            rows = max(batch_size, 1)
            if policy is not None and policy.shadows and entry is not None:
                answer = self._start_shadows(request, ctx.protocol, entry, policy, target, key)
            queueing = _queueing(request, ctx, loaded)
            arrays = await batcher.infer(
                feeds,
                output_names,
                batch_size,
                queueing.timeout_s,
                timing,
                trace,
                ctx.solo,
                queueing.level,
                queueing.delay_s,
            )
            outputs = _build_outputs(target, output_names, arrays)
            if answer is not None and not answer.done():
                answer.set_result(outputs)
            if request.id or "label" in request.parameters:  # ground truth, by request id
                self.feedback.record(loaded, request.id, outputs, request.parameters.get("label"))
        except GatewayError as failure:
            code, error = failure.code.value, failure.message
            raise
        except BaseException as failure:  # cancelled (the caller left) or a bug
            code = "cancelled" if isinstance(failure, asyncio.CancelledError) else "internal"
            raise
        finally:
            if answer is not None and not answer.done():
                answer.set_result(None)  # the primary failed: its shadows compare with nothing
            target.release()
            ended_ns = time.perf_counter_ns()
            batcher.statistics.record_request(code == OK, rows, ended_ns - started_ns)
            telemetry.request_finished(
                RequestEvent(
                    request.model_name,
                    str(target.version),
                    role,
                    ctx.protocol,
                    code,
                    started_ns,
                    ended_ns,
                    rows,
                    timing,
                    request.id,
                    error,
                    refused_by_all,
                    pinned=bool(request.model_version),
                    caller_limit_s=None if queueing is None else queueing.caller_limit_s,
                ),
                trace,
            )
        return InferResponse(
            model_name=request.model_name,
            model_version=str(target.version),
            outputs=outputs,
            id=request.id,
        )

    def _refused_by_the_others(
        self, request: InferRequest, target: ModelVersion, entry: ModelEntry | None
    ) -> bool:
        """Whether every other version named in the model's traffic policy (with any weight: a
        rollout's two versions, also at its last step) refuses `request`'s inputs as `target`
        did: then the caller sent what no version takes, and its failure says nothing of
        `target`. False without a policy or another loaded version named in it, and on any
        error here (the request is refused either way). Only on a refused request's path."""
        try:
            if entry is None:  # a pinned request: resolved this very step, so known
                entry = self.registry.get_model(request.model_name)
            policy = entry.traffic
            others = [
                version.loaded.signature
                for number in (policy.weights if policy is not None else ())
                if number != target.version
                and (version := entry.versions.get(number)) is not None
                and version.loaded is not None
            ]
            return bool(others) and all(_refuses(signature, request) for signature in others)
        except Exception:
            logger.exception("model %s: comparing a refused request failed", request.model_name)
            return False

    def _start_shadows(
        self,
        request: InferRequest,
        protocol: str,
        entry: ModelEntry,
        policy: TrafficPolicy,
        primary: ModelVersion,
        key: str | None,
    ) -> asyncio.Future[Sequence[Tensor] | None] | None:
        """Copy the request to the policy's shadows that take it (chosen by the request's
        routing key); the future is the primary's answer they compare with (None when the
        primary failed)."""
        chosen = policy.shadows_for(key)
        if not chosen:
            return None
        answer: asyncio.Future[Sequence[Tensor] | None] = asyncio.get_running_loop().create_future()
        for number in chosen:
            shadow = entry.versions.get(number)
            # A version that also takes routed traffic (a rollout's candidate) shadows the
            # requests routed to the other versions only.
            if shadow is not None and shadow.ready and shadow is not primary:
                self.shadows.submit(request, primary, shadow, answer, policy.tolerance, protocol)
        return answer


def _routing_key(
    request: InferRequest, ctx: RequestContext, policy: TrafficPolicy | None
) -> str | None:
    """What a routed request is hashed by: its sticky header or metadata value, else its id."""
    if policy is None:
        return None
    if policy.sticky_key and ctx.headers is not None:
        value = ctx.headers.get(policy.sticky_key)
        if value:
            return value
    return request.id or None


def _summary(result: object) -> str:
    if isinstance(result, LoadResult):
        parts = [
            f"{what}={list(numbers)}"
            for what, numbers in (
                ("loaded", result.loaded),
                ("unloaded", result.unloaded),
                ("unchanged", result.unchanged),
            )
            if numbers
        ]
        return " ".join(parts)
    return ""


def _refuses(signature: ModelSignature, request: InferRequest) -> bool:
    try:
        validate_request(request, signature)
    except InvalidInputError:
        return True
    return False


def _check_parameters(request: InferRequest) -> None:
    """Refuse the request parameters that mean the same to every version when malformed:
    Triton's `timeout` and `priority`, and our `label` (InvalidInputError). Checked before the
    version's own checks, so that a rollout can tell a caller's mistake from its candidate's."""
    for name, what in (
        ("timeout", "a non-negative integer number of microseconds"),
        ("priority", "a non-negative integer (1 is the highest level; 0 the model's default)"),
    ):
        value = request.parameters.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            raise InvalidInputError(f"parameter '{name}' must be {what}")
    label = request.parameters.get("label")
    if label is not None:
        parse_label(label, "parameter 'label'")


class _Queueing(NamedTuple):
    level: int
    """Its priority level (Triton's `priority` parameter); 0 for a model without levels."""
    timeout_s: float | None
    """How long until it is refused: the transport's deadline (gRPC), and the `timeout`
    parameter or the level's queue policy default (unless that policy DELAYs instead)."""
    delay_s: float | None
    """How long until it is delayed instead (the policy's timeout_action DELAY)."""
    caller_limit_s: float | None
    """The part of those limits its caller set: the deadline, an honoured `timeout`."""


def _queueing(request: InferRequest, ctx: RequestContext, loaded: LoadedVersion) -> _Queueing:
    """Where and how long the request may wait for the model (see _Queueing)."""
    batching = loaded.policy.batching
    level = 0
    queue = None
    if batching is not None:
        level = batching.level(request.parameters.get("priority"))  # checked: int or None
        queue = batching.queue_for(level)
    policy_s = requested_s = None
    default_us = queue.default_timeout_us if queue is not None else 0
    requested = request.parameters.get("timeout")  # checked by _check_parameters
    # Triton: an override may shorten the policy's timeout, never lengthen it.
    if (
        requested
        and (queue is None or queue.allow_timeout_override)
        and (not default_us or requested < default_us)
    ):
        policy_s = requested_s = requested / 1e6
    elif default_us:
        policy_s = default_us / 1e6
    deadline_s = None if ctx.deadline_s is None else ctx.deadline_s - time.monotonic()
    if queue is not None and queue.delay:
        return _Queueing(level, deadline_s, policy_s, deadline_s)
    timeout_s = _soonest(deadline_s, policy_s)
    # The caller's limit is the one that binds (or none): the policy's own default, shorter,
    # is the version's, not the caller's.
    caller_s = _soonest(deadline_s, requested_s)
    return _Queueing(level, timeout_s, None, caller_s if caller_s == timeout_s else None)


def _soonest(*limits: float | None) -> float | None:
    return min((limit for limit in limits if limit is not None), default=None)


def _build_outputs(
    target: ModelVersion, names: list[str], arrays: list[npt.NDArray[Any]]
) -> list[Tensor]:
    """Name and type the arrays the batcher returned (it checked their count and rows)."""
    assert target.loaded is not None
    specs = target.loaded.signature.outputs_by_name
    return [
        Tensor(name, specs[name].datatype, array) for name, array in zip(names, arrays, strict=True)
    ]
