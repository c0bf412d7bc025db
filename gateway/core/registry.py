"""Models, their versions' lifecycle states, and leases that keep a version alive while used."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

from gateway.core.batcher import DynamicBatcher, batcher_config
from gateway.core.errors import NotFoundError, UnavailableError
from gateway.core.model import LoadedVersion
from gateway.core.ports import ModelRunner


class VersionState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    DRAINING = "DRAINING"
    UNLOADED = "UNLOADED"
    FAILED = "FAILED"


@dataclass(slots=True)
class ModelVersion:
    """One version of a model and where it is in its lifecycle."""

    name: str
    version: int
    state: VersionState = VersionState.LOADING
    reason: str = ""
    loaded: LoadedVersion | None = None
    runner: ModelRunner | None = None
    batcher: DynamicBatcher | None = None

    @property
    def ready(self) -> bool:
        return self.state is VersionState.READY


@dataclass(slots=True)
class ModelEntry:
    """A model of the repository; `error` says why none of it could be loaded, if so."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    error: str = ""

    def ready_versions(self) -> list[ModelVersion]:
        return [v for _, v in sorted(self.versions.items()) if v.ready]

    def why_not_ready(self) -> str:
        """': <reasons>' for a model without a READY version, from its or its versions' errors."""
        reasons = [self.error] if self.error else []
        reasons += [
            f"version {number}: {v.reason}"
            for number, v in sorted(self.versions.items())
            if v.reason
        ]
        return ": " + "; ".join(reasons) if reasons else ""


class ModelRegistry:
    """The models the gateway knows, keyed by name then version number."""

    def __init__(
        self,
        executor: Executor,
        *,
        default_max_queue_size: int = 1024,
        max_queue_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self._models: dict[str, ModelEntry] = {}
        self._executor = executor
        self._default_max_queue_size = default_max_queue_size
        self._max_queue_bytes = max_queue_bytes

    def entry(self, name: str) -> ModelEntry:
        found = self._models.get(name)
        if found is None:
            found = self._models[name] = ModelEntry(name)
        return found

    def models(self) -> list[ModelEntry]:
        return [self._models[name] for name in sorted(self._models)]

    def get_model(self, name: str) -> ModelEntry:
        found = self._models.get(name)
        if found is None:
            raise NotFoundError(f"unknown model '{name}'")
        return found

    def set_ready(self, loaded: LoadedVersion, runner: ModelRunner) -> ModelVersion:
        entry = self.entry(loaded.name)
        version = entry.versions.setdefault(
            loaded.version, ModelVersion(loaded.name, loaded.version)
        )
        config = batcher_config(
            loaded.policy,
            loaded.signature,
            loaded.concurrency,
            self._default_max_queue_size,
            self._max_queue_bytes,
        )
        version.batcher = DynamicBatcher(
            f"{loaded.name}:{loaded.version}",
            runner,
            self._executor,
            config,
            loaded.signature.output_names,
        )
        version.loaded, version.runner = loaded, runner
        version.state, version.reason = VersionState.READY, ""
        entry.error = ""
        return version

    def set_failed(self, name: str, version: int | None, reason: str) -> None:
        entry = self.entry(name)
        if version is None:
            entry.error = reason
            return
        record = entry.versions.setdefault(version, ModelVersion(name, version))
        record.state, record.reason = VersionState.FAILED, reason

    def resolve(self, name: str, version: str) -> ModelVersion:
        """The READY version a request names ('' = the latest READY one)."""
        entry = self.get_model(name)
        if not version:
            ready = entry.ready_versions()
            if not ready:
                raise UnavailableError(
                    f"model '{name}' has no ready version{entry.why_not_ready()}"
                )
            return ready[-1]
        if not (version.isascii() and version.isdigit()):
            raise NotFoundError(f"unknown version '{version}' of model '{name}'")
        found = entry.versions.get(int(version))
        if found is None:
            raise NotFoundError(f"unknown version '{version}' of model '{name}'")
        if not found.ready:
            why = f": {found.reason}" if found.reason else ""
            raise UnavailableError(
                f"version {version} of model '{name}' is not ready ({found.state.name}){why}"
            )
        return found

    def all_versions(self) -> Iterator[ModelVersion]:
        for entry in self.models():
            yield from (v for _, v in sorted(entry.versions.items()))
