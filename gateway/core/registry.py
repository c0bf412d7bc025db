"""Models, their versions' lifecycle states, labels, and leases that keep a version alive while
requests use it.

Every method runs on the event loop, so each change is atomic: a request resolves either the
version before a swap or the one after, never a half-installed one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.core.batcher import DynamicBatcher, batcher_config
from gateway.core.errors import (
    MAX_MESSAGE_CHARS,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
    clipped,
)
from gateway.core.model import LoadedVersion
from gateway.core.ports import ModelRunner
from gateway.core.telemetry import Telemetry
from gateway.core.traffic import TrafficPolicy
from gateway.core.validation import parse_version
from gateway.core.workers import WorkerPool

SHADOW_QUEUE_SIZE = 64
"""Shadow copies that may wait for one version at once; more are dropped."""

LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")


class VersionState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    DRAINING = "DRAINING"
    UNLOADED = "UNLOADED"
    FAILED = "FAILED"


@dataclass(slots=True, eq=False)
class ModelVersion:
    """One version of a model and where it is in its lifecycle.

    A request holds a lease from resolving the version until it is answered; a version leaving
    service waits for its leases to end before its session is released."""

    name: str
    version: int
    state: VersionState = VersionState.LOADING
    reason: str = ""
    loaded: LoadedVersion | None = None
    runner: ModelRunner | None = None
    batcher: DynamicBatcher | None = None
    shadow_batcher: DynamicBatcher | None = None
    """Runs shadow copies on the low-priority pool, in a line of their own."""
    fingerprint: str = ""
    leases: int = 0
    _released: asyncio.Event | None = None

    @property
    def ready(self) -> bool:
        return self.state is VersionState.READY

    def acquire(self) -> None:
        self.leases += 1

    def release(self) -> None:
        self.leases -= 1
        if self.leases == 0 and self._released is not None:
            self._released.set()

    async def wait_released(self) -> None:
        """Return once no request holds a lease and nothing waits or runs in its batcher."""
        while self.leases:
            self._released = asyncio.Event()
            await self._released.wait()
        for batcher in (self.batcher, self.shadow_batcher):
            if batcher is not None:
                await batcher.wait_idle()


@dataclass(slots=True)
class ModelEntry:
    """A model of the repository; `error` says why none of it could be loaded, if so."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    error: str = ""
    labels: dict[str, int] = field(default_factory=dict)
    unloaded: bool = False
    """Unloaded on request: the model does not count against the server's readiness."""
    load_failures: int = 0
    traffic: TrafficPolicy | None = None

    def pinned(self) -> set[int]:
        """Versions that must keep serving whatever the version policy says: those a label
        or the traffic policy names."""
        named = set(self.labels.values())
        if self.traffic is not None:
            named |= self.traffic.versions()
        return named

    def ready_versions(self) -> list[ModelVersion]:
        return [v for _, v in sorted(self.versions.items()) if v.ready]

    def latest_ready(self) -> ModelVersion | None:
        """The highest READY version (what a request without a version gets), or None."""
        latest: ModelVersion | None = None
        for number, version in self.versions.items():
            if version.ready and (latest is None or number > latest.version):
                latest = version
        return latest

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
        workers: WorkerPool,
        *,
        default_max_queue_size: int = 1024,
        max_queue_bytes: int = 256 * 1024 * 1024,
        solo_on_loop_s: float = 0.0,
        telemetry: Telemetry | None = None,
        shadow_workers: WorkerPool | None = None,
    ) -> None:
        self._models: dict[str, ModelEntry] = {}
        self._shadow_workers = shadow_workers
        self.telemetry = telemetry or Telemetry()
        self._workers = workers
        self._default_max_queue_size = default_max_queue_size
        self._max_queue_bytes = max_queue_bytes
        self._solo_on_loop_s = solo_on_loop_s

    def entry(self, name: str) -> ModelEntry:
        found = self._models.get(name)
        if found is None:
            found = self._models[name] = ModelEntry(name)
        return found

    def knows(self, name: str) -> bool:
        """Whether `name` is a model this registry has seen (loaded, failed or unloaded)."""
        return name in self._models

    def models(self) -> list[ModelEntry]:
        return [self._models[name] for name in sorted(self._models)]

    def get_model(self, name: str) -> ModelEntry:
        found = self._models.get(name)
        if found is None:
            raise NotFoundError(f"unknown model '{clipped(name)}'")
        return found

    def set_loading(self, name: str, version: int) -> None:
        """Show a version as LOADING, unless an older copy of it still serves (a reload)."""
        entry = self.entry(name)
        current = entry.versions.get(version)
        if current is None or not current.ready:
            entry.versions[version] = ModelVersion(name, version)

    def install(
        self, loaded: LoadedVersion, runner: ModelRunner, fingerprint: str = ""
    ) -> ModelVersion | None:
        """Make a loaded version READY, atomically; returns the copy it replaces, if one was
        serving (the caller drains it)."""
        entry = self.entry(loaded.name)
        config = batcher_config(
            loaded.policy,
            loaded.signature,
            loaded.concurrency,
            self._default_max_queue_size,
            self._max_queue_bytes,
            self._solo_on_loop_s,
        )
        batcher = DynamicBatcher(
            f"{loaded.name}:{loaded.version}",
            runner,
            self._workers,
            config,
            loaded.signature.output_names,
            telemetry=self.telemetry,
        )
        shadow_batcher = None
        if self._shadow_workers is not None:
            shadow_config = dataclasses.replace(
                config,
                concurrency=1,
                max_queue_size=SHADOW_QUEUE_SIZE,
                max_queue_delay_s=0.0,
                solo_on_loop_s=0.0,  # shadows never hold the loop
            )
            shadow_batcher = DynamicBatcher(
                f"{loaded.name}:{loaded.version}",
                runner,
                self._shadow_workers,
                shadow_config,
                loaded.signature.output_names,
                telemetry=None,  # shadow batches are not the version's executions
            )
        fresh = ModelVersion(
            loaded.name,
            loaded.version,
            VersionState.READY,
            loaded=loaded,
            runner=runner,
            batcher=batcher,
            shadow_batcher=shadow_batcher,
            fingerprint=fingerprint,
        )
        previous = entry.versions.get(loaded.version)
        entry.versions[loaded.version] = fresh
        entry.error, entry.unloaded = "", False
        return previous if previous is not None and previous.ready else None

    def set_ready(self, loaded: LoadedVersion, runner: ModelRunner) -> ModelVersion:
        """Install a version that nothing served before (start-up and tests)."""
        self.install(loaded, runner)
        return self.entry(loaded.name).versions[loaded.version]

    def set_failed(self, name: str, version: int | None, reason: str) -> None:
        """Record a failed load; a copy of the version that still serves keeps serving."""
        reason = clipped(reason, MAX_MESSAGE_CHARS)  # shown in every index answer from now on
        entry = self.entry(name)
        entry.load_failures += 1
        if version is None:
            entry.error = reason
            return
        current = entry.versions.get(version)
        if current is not None and current.ready:
            current.reason = f"reload failed, still serving the previous copy: {reason}"
            return
        entry.versions[version] = ModelVersion(name, version, VersionState.FAILED, reason)

    def begin_drain(self, version: ModelVersion) -> None:
        """Stop routing new requests to `version`; its leases and queue still finish."""
        version.state, version.reason = VersionState.DRAINING, "unloading"
        for batcher in (version.batcher, version.shadow_batcher):
            if batcher is not None:
                batcher.flush()
        entry = self._models.get(version.name)
        if entry is not None and entry.versions.get(version.version) is version:
            entry.labels = {k: v for k, v in entry.labels.items() if v != version.version}

    def finish_drain(self, version: ModelVersion) -> None:
        version.state, version.reason = VersionState.UNLOADED, "unloaded"
        version.loaded = version.runner = version.batcher = version.shadow_batcher = None

    # -- labels -------------------------------------------------------------------------
    def set_label(self, name: str, label: str, version: str) -> None:
        """Point `label` at a READY version (atomic; the label may already exist)."""
        if not LABEL.fullmatch(label):
            raise InvalidInputError(
                f"invalid label '{clipped(label)}': expected a letter then up to 63 letters, "
                "digits, '_', '.' or '-'"
            )
        entry = self.get_model(name)
        number = parse_version(version)
        if number is None:
            raise InvalidInputError(f"a label points at a version number, not '{clipped(version)}'")
        target = entry.versions.get(number)
        if target is None:
            raise NotFoundError(f"unknown version '{version}' of model '{name}'")
        if not target.ready:
            raise InvalidInputError(
                f"version {version} of model '{name}' is {target.state.name}; a label can only "
                "point at a READY version"
            )
        entry.labels[label] = target.version

    def delete_label(self, name: str, label: str) -> None:
        entry = self.get_model(name)
        if entry.labels.pop(label, None) is None:
            raise NotFoundError(f"model '{name}' has no label '{clipped(label)}'")

    # -- traffic ------------------------------------------------------------------------
    def set_traffic(self, name: str, policy: TrafficPolicy | None) -> None:
        """Replace the model's traffic policy at once; it may only name READY versions."""
        entry = self.get_model(name)
        if policy is not None:
            for number in sorted(policy.versions()):
                version = entry.versions.get(number)
                if version is None or not version.ready:
                    state = "unknown" if version is None else version.state.name
                    raise InvalidInputError(
                        f"version {number} of model '{name}' is {state}; a traffic policy can "
                        "only name READY versions"
                    )
        entry.traffic = policy

    def route(self, entry: ModelEntry, key: str | None) -> tuple[ModelVersion, str]:
        """The version of `entry` a request without a version goes to, and its role (primary
        or canary): by the traffic policy, else the latest READY version."""
        policy = entry.traffic
        if policy is not None:
            number = policy.route(key)
            found = entry.versions.get(number)
            if found is not None and found.ready:
                return found, "primary" if number == policy.primary else "canary"
        return self._latest(entry), "primary"

    # -- requests -----------------------------------------------------------------------
    def resolve(self, name: str, version: str) -> ModelVersion:
        """The READY version a request names: a number, a label, or '' for the latest."""
        entry = self.get_model(name)
        if not version:
            return self._latest(entry)
        number = parse_version(version)
        if number is None:
            if version not in entry.labels:
                raise NotFoundError(
                    f"unknown version or label '{clipped(version)}' of model '{name}'"
                )
            number = entry.labels[version]
        found = entry.versions.get(number)
        if found is None:
            raise NotFoundError(f"unknown version '{version}' of model '{name}'")
        if not found.ready:
            why = f": {found.reason}" if found.reason else ""
            raise UnavailableError(
                f"version {version} of model '{name}' is not ready ({found.state.name}){why}"
            )
        return found

    @staticmethod
    def _latest(entry: ModelEntry) -> ModelVersion:
        latest = entry.latest_ready()
        if latest is None:
            raise UnavailableError(
                f"model '{entry.name}' has no ready version{entry.why_not_ready()}"
            )
        return latest

    def all_versions(self) -> Iterator[ModelVersion]:
        for entry in self.models():
            yield from (v for _, v in sorted(entry.versions.items()))
