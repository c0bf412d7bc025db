"""The one use-case API both adapters call: health, metadata and inference."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from gateway.core.errors import (
    GatewayError,
    InvalidInputError,
    UnavailableError,
)
from gateway.core.model import LoadedVersion
from gateway.core.registry import ModelRegistry, ModelVersion, VersionState
from gateway.core.statistics import VersionStatistics
from gateway.core.types import InferRequest, InferResponse, RequestContext, Tensor
from gateway.core.validation import validate_request

SERVER_NAME = "inference-gateway"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One line of the repository index."""

    name: str
    version: int | None
    state: VersionState
    reason: str


class InferenceService:
    """Resolves the target version, validates, hands the request to its batcher, answers."""

    def __init__(self, registry: ModelRegistry, *, version: str) -> None:
        self.registry = registry
        self.version = version
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
        """Ready when accepting requests and every model has at least one READY version."""
        models = self.registry.models()
        return self._accepting and all(entry.ready_versions() for entry in models)

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

    def repository_index(self, ready_only: bool) -> list[IndexEntry]:
        """Every model and version the gateway knows, with its state and why it is not ready;
        a model that failed before any version was known appears once, without a version."""
        index: list[IndexEntry] = []
        for entry in self.registry.models():
            if entry.error and not entry.versions and not ready_only:
                index.append(IndexEntry(entry.name, None, VersionState.FAILED, entry.error))
            for number, version in sorted(entry.versions.items()):
                if ready_only and not version.ready:
                    continue
                index.append(IndexEntry(entry.name, number, version.state, version.reason))
        return index

    def ready_version_names(self, name: str) -> list[str]:
        return [str(v.version) for v in self.registry.get_model(name).ready_versions()]

    def loaded_version(self, name: str, version: str) -> LoadedVersion:
        found = self.registry.resolve(name, version)
        assert found.loaded is not None
        return found.loaded

    # -- inference ----------------------------------------------------------------------
    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        if not self._accepting:
            raise UnavailableError("the server is shutting down")
        target = self.registry.resolve(request.model_name, request.model_version)
        loaded, batcher = target.loaded, target.batcher
        assert loaded is not None and batcher is not None
        started_ns = time.perf_counter_ns()
        try:
            feeds, output_names, batch_size = validate_request(request, loaded.signature)
            arrays = await batcher.infer(
                feeds, output_names, batch_size, _wait_limit_s(request, ctx, loaded)
            )
            outputs = _build_outputs(target, output_names, arrays)
        except GatewayError:
            batcher.statistics.record_request(False, 0, time.perf_counter_ns() - started_ns)
            raise
        batcher.statistics.record_request(
            True, max(batch_size, 1), time.perf_counter_ns() - started_ns
        )
        return InferResponse(
            model_name=request.model_name,
            model_version=str(target.version),
            outputs=outputs,
            id=request.id,
        )


def _wait_limit_s(
    request: InferRequest, ctx: RequestContext, loaded: LoadedVersion
) -> float | None:
    """How long the request may wait for the model: the transport's deadline (gRPC), and
    Triton's `timeout` request parameter (microseconds) or the queue policy's default."""
    limits: list[float] = []
    if ctx.deadline_s is not None:
        limits.append(ctx.deadline_s - time.monotonic())
    batching = loaded.policy.batching
    requested = request.parameters.get("timeout")
    if requested is not None and (
        not isinstance(requested, int) or isinstance(requested, bool) or requested < 0
    ):
        raise InvalidInputError(
            "parameter 'timeout' must be a non-negative integer number of microseconds"
        )
    if requested and (batching is None or batching.queue.allow_timeout_override):
        limits.append(requested / 1e6)
    elif batching is not None and batching.queue.default_timeout_us:
        limits.append(batching.queue.default_timeout_us / 1e6)
    return min(limits) if limits else None


def _build_outputs(
    target: ModelVersion, names: list[str], arrays: list[npt.NDArray[Any]]
) -> list[Tensor]:
    """Name and type the arrays the batcher returned (it checked their count and rows)."""
    assert target.loaded is not None
    specs = target.loaded.signature.outputs_by_name
    return [
        Tensor(name, specs[name].datatype, array) for name, array in zip(names, arrays, strict=True)
    ]
