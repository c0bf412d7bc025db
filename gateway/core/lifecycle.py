"""Loads, swaps and retires model versions while requests keep flowing.

The order of a swap: the new copy is loaded and warmed on the load pool (never the inference
pool) while the old one serves; it is installed in the registry in one step on the event loop;
only then does the old copy stop taking requests, finish the ones it holds, and release its
session. A load that fails changes nothing that serves.

A change, once begun, runs to its end even if its caller leaves (an admin client that
disconnects or whose deadline passes, the poller stopped at shutdown): cut halfway, it would
leave versions shown LOADING for good, or the registry and the saved documents disagreeing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from gateway.core.errors import (
    MAX_MESSAGE_CHARS,
    GatewayError,
    InvalidInputError,
    NotFoundError,
    clipped,
)
from gateway.core.model import LoadedVersion
from gateway.core.ports import ModelRunner, ModelSnapshot, ModelSource, SourceError
from gateway.core.registry import ModelRegistry, ModelVersion, VersionState
from gateway.core.traffic import TrafficPolicy, parse_policy
from gateway.core.validation import check_model_name

logger = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K")

Check = Callable[[], None]
"""Run under the model's lock right before a change, in the same step as it: raising (a
GatewayError) refuses the change. A check made before the lock would leave a gap in which
another change (a rollout starting) could make it stale."""


@dataclass(frozen=True, slots=True)
class LoadFailure:
    model: str
    version: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load or unload changed."""

    model: str
    loaded: tuple[int, ...] = ()
    unloaded: tuple[int, ...] = ()
    unchanged: tuple[int, ...] = ()
    failures: tuple[LoadFailure, ...] = ()


class ModelListener(Protocol):
    """Told when a model's persisted state is read at its first load, and when it is unloaded
    (the rollout controller: resume, abort)."""

    def model_restored(self, name: str, documents: Mapping[str, Any]) -> None: ...

    async def model_unloaded(self, name: str) -> None:
        """Awaited under the model's lock: what it saves is on disk before any later load of
        the model reads the model's files."""


class ModelLifecycle:
    """Applies a model's repository state to the registry: one change per model at a time."""

    def __init__(self, registry: ModelRegistry, source: ModelSource, pool: Executor) -> None:
        self.registry = registry
        self._source = source
        self._pool = pool
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        """A model's lock lives while someone holds or awaits it: calls naming models that do
        not exist (404s, any client can send them) leave nothing behind."""
        self._writes: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        """One per (model, document kind), held while one is written: writes land in the
        order they were asked for (the load pool has several threads)."""
        self._draining: set[ModelVersion] = set()
        self._drains: set[asyncio.Task[None]] = set()
        self._changes: set[asyncio.Task[Any]] = set()
        self._labels_restored: set[str] = set()
        self._seen: dict[str, str | None] = {}
        self._applied: dict[str, str | None] = {}
        self._listeners: list[ModelListener] = []

    def add_listener(self, listener: ModelListener) -> None:
        """At start-up, before any model loads."""
        self._listeners.append(listener)

    async def _blocking(self, function: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(function, *args))

    def _lock(self, name: str) -> asyncio.Lock:
        return _held_lock(self._locks, name)

    async def _change(
        self, name: str, change: Coroutine[Any, Any, T], check: Check | None = None
    ) -> T:
        """Run `change` under the model's lock in a task of its own that the caller's
        cancellation does not reach (see the module's docstring); close() waits for it.
        `check`, if given, runs first under the lock and may refuse the change (see Check)."""

        async def locked() -> T:
            async with self._lock(name):
                if check is not None:
                    try:
                        check()
                    except BaseException:
                        change.close()  # never started
                        raise
                return await change

        task = asyncio.ensure_future(locked())
        self._changes.add(task)
        task.add_done_callback(self._change_done)
        return await asyncio.shield(task)

    def _change_done(self, task: asyncio.Task[Any]) -> None:
        self._changes.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here too: a caller that left cannot read it

    async def model_names(self) -> list[str]:
        """The models in the repository, loaded or not. Listed on a thread of its own, not the
        load pool: the repository index must not wait behind loads (a warm-up takes seconds)."""
        return await asyncio.to_thread(self._source.model_names)

    # -- load ---------------------------------------------------------------------------
    async def load_all(self, names: Sequence[str] | None = None) -> list[LoadFailure]:
        """Load every model (or `names`); failures are recorded and returned, never raised."""
        if names is None:
            names = await self.model_names()
        results = await asyncio.gather(*(self.load(name) for name in names), return_exceptions=True)
        failures: list[LoadFailure] = []
        for name, result in zip(names, results, strict=True):
            if isinstance(result, LoadResult):
                failures.extend(result.failures)
            elif isinstance(result, GatewayError):
                failures.append(LoadFailure(name, None, result.message))
            elif isinstance(result, BaseException):
                raise result
        return failures

    async def load(
        self, name: str, config_json: str | None = None, reload: bool = False
    ) -> LoadResult:
        """Bring the model in line with its directory (and `config_json`, Triton's override):
        versions new to the policy load, changed ones reload, ones that left it drain. Failures
        are in the result; the versions that served before keep serving."""
        check_model_name(name)
        return await self._change(name, self._apply(name, config_json, reload))

    async def _apply(self, name: str, config_json: str | None, reload: bool) -> LoadResult:
        fingerprint = await self._blocking(self._source.fingerprint, name)
        if fingerprint is None:
            raise NotFoundError(f"model '{name}' is not in the model repository")
        self._seen[name] = self._applied[name] = fingerprint
        try:
            snapshot = await self._blocking(self._source.read, name, config_json)
        except SourceError as exc:
            return self._model_failed(name, str(exc))
        entry = self.registry.entry(name)
        first = name not in self._labels_restored
        pinned = entry.pinned()  # labels and the traffic policy keep their versions serving
        restored_traffic = _restored_traffic(snapshot) if first else None
        if first:
            pinned |= set(snapshot.labels.values())
            if restored_traffic is not None:
                pinned |= restored_traffic.versions()
            pinned |= _document_pins(snapshot)
        on_disk = sorted(snapshot.versions)
        wanted = set(snapshot.policy.versions.select(on_disk)) | (pinned & set(on_disk))
        serving = {number: v for number, v in entry.versions.items() if v.ready}
        kept = pinned & serving.keys()
        if not wanted and not kept:
            return self._model_failed(
                name,
                f"no version directory <N>/{snapshot.policy.default_model_filename} matches "
                "the version policy",
            )
        to_load = sorted(
            number
            for number in wanted
            if reload
            or number not in serving
            or serving[number].fingerprint != snapshot.versions[number]
        )
        for number in to_load:
            self.registry.set_loading(name, number)
        try:
            outcomes = await asyncio.gather(
                *(self._load_version(snapshot, number) for number in to_load)
            )
        except BaseException:  # cancelled all the same (the load pool shut down): say so
            for number in to_load:
                self.registry.set_failed(name, number, "the load was interrupted")
            self._applied.pop(name, None)  # so that the poller applies the files again
            raise
        loaded: list[int] = []
        failures: list[LoadFailure] = []
        for number, outcome in zip(to_load, outcomes, strict=True):
            if isinstance(outcome, LoadFailure):
                self.registry.set_failed(name, number, outcome.reason)
                failures.append(outcome)
                continue
            fresh, runner = outcome
            try:
                replaced = self.registry.install(fresh, runner, snapshot.versions[number])
            except Exception as exc:  # a bug must not leave the version LOADING for good
                logger.exception("model %s version %d could not be installed", name, number)
                await self._blocking(runner.close)
                failure = LoadFailure(name, number, f"unexpected error: {exc}")
                self.registry.set_failed(name, number, failure.reason)
                failures.append(failure)
                continue
            loaded.append(number)
            logger.info(
                "model %s version %d ready on %s (max_batch_size %d)%s",
                name,
                number,
                ", ".join(fresh.providers),
                fresh.signature.max_batch_size,
                ": swapped in for the previous copy" if replaced is not None else "",
            )
            if replaced is not None:
                self._retire(replaced)
        # Nothing leaves service while part of the change failed: the model keeps serving.
        leaving = [] if failures else sorted(serving.keys() - wanted - kept)
        for number in leaving:
            self._retire(entry.versions[number])
        for number, version in list(entry.versions.items()):
            if version.state is VersionState.FAILED and number not in wanted:
                del entry.versions[number]  # a failed version that left the policy
        if first:
            self._restore_labels(name, snapshot)
            self._restore_traffic(name, restored_traffic)
            for listener in self._listeners:
                listener.model_restored(name, snapshot.documents)
        return LoadResult(
            name,
            loaded=tuple(loaded),
            unloaded=tuple(leaving),
            unchanged=tuple(sorted(wanted - set(to_load))),
            failures=tuple(failures),
        )

    async def _load_version(
        self, snapshot: ModelSnapshot, number: int
    ) -> tuple[LoadedVersion, ModelRunner] | LoadFailure:
        try:
            return await self._blocking(self._source.load, snapshot, number)
        except SourceError as exc:
            reason = str(exc)
        except Exception as exc:  # a bug must not stop the other versions and models
            logger.exception("unexpected error loading %s version %d", snapshot.name, number)
            reason = f"unexpected error: {exc}"
        logger.error("model %s version %d failed to load: %s", snapshot.name, number, reason)
        return LoadFailure(snapshot.name, number, reason)

    def _model_failed(self, name: str, reason: str) -> LoadResult:
        """The model as a whole cannot be read: what serves keeps serving, and says why."""
        shown = clipped(reason, MAX_MESSAGE_CHARS)  # a config may quote anything at length
        logger.error("model %s: %s", name, shown)
        entry = self.registry.entry(name)
        serving = entry.ready_versions()
        if serving:
            entry.load_failures += 1
            for version in serving:
                version.reason = f"reload failed, still serving the previous copy: {shown}"
        else:
            self.registry.set_failed(name, None, reason)  # which cuts it short itself
        return LoadResult(name, failures=(LoadFailure(name, None, reason),))

    def _restore_labels(self, name: str, snapshot: ModelSnapshot) -> None:
        self._labels_restored.add(name)
        entry = self.registry.entry(name)
        for label, number in snapshot.labels.items():
            version = entry.versions.get(number)
            if version is not None and version.ready:
                entry.labels.setdefault(label, number)
            else:
                logger.warning(
                    "model %s: label '%s' points at version %d, which is not ready: ignored",
                    name,
                    label,
                    number,
                )

    def _restore_traffic(self, name: str, policy: TrafficPolicy | None) -> None:
        if policy is None:
            return
        try:
            self.registry.set_traffic(name, policy)
        except GatewayError as exc:
            logger.warning("model %s: the saved traffic policy is not restored: %s", name, exc)

    # -- unload -------------------------------------------------------------------------
    async def unload(self, name: str) -> LoadResult:
        """Stop routing to every version of the model; they finish in-flight requests, then
        their sessions are released. Returns once they stopped taking requests."""
        check_model_name(name)
        return await self._change(name, self._unload(name))

    async def _unload(self, name: str) -> LoadResult:
        entry = self.registry.get_model(name)
        leaving = [v for _, v in sorted(entry.versions.items()) if v.ready]
        entry.unloaded = True
        entry.labels.clear()
        entry.traffic = None
        self._labels_restored.discard(name)
        for version in leaving:
            self._retire(version)
        for listener in self._listeners:
            await listener.model_unloaded(name)
        return LoadResult(name, unloaded=tuple(v.version for v in leaving))

    def _retire(self, version: ModelVersion) -> None:
        self.registry.begin_drain(version)
        self._draining.add(version)
        task = asyncio.create_task(self._drain(version))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(self, version: ModelVersion) -> None:
        await version.wait_released()
        runner = version.runner
        self.registry.finish_drain(version)
        self._draining.discard(version)
        if runner is not None:
            await self._blocking(runner.close)
        logger.info("model %s version %d unloaded", version.name, version.version)

    async def wait_drained(self) -> None:
        """Return once every version that left service has released its session."""
        while self._drains:
            await asyncio.gather(*list(self._drains))

    # -- labels -------------------------------------------------------------------------
    async def set_label(
        self, name: str, label: str, version: str, check: Check | None = None
    ) -> dict[str, int]:
        """Point `label` at `version`; `check`, if given, may refuse it (see Check)."""

        async def change() -> dict[str, int]:
            self.registry.set_label(name, label, version)
            return await self._save_labels(name)

        return await self._change(name, change(), check)

    async def delete_label(
        self, name: str, label: str, check: Check | None = None
    ) -> dict[str, int]:
        async def change() -> dict[str, int]:
            self.registry.delete_label(name, label)
            return await self._save_labels(name)

        return await self._change(name, change(), check)

    async def _save_labels(self, name: str) -> dict[str, int]:
        labels = dict(self.registry.get_model(name).labels)
        try:
            await _finished(asyncio.to_thread(self._source.save_labels, name, labels))
        except OSError as exc:  # a read-only repository: labels hold until the next restart
            logger.warning("model %s: labels are not persisted: %s", name, exc)
        return labels

    # -- traffic ------------------------------------------------------------------------
    async def set_traffic(
        self,
        name: str,
        policy: TrafficPolicy | None,
        persisted: TrafficPolicy | None = None,
        when: Callable[[], bool] | None = None,
        check: Check | None = None,
    ) -> bool:
        """Replace (None: remove) the model's traffic policy at once, and persist it (or
        `persisted`: a rollout's step without the shadow it adds, which it sets again itself).
        With `when`, only if it still holds once the model's other changes before this one
        are done (a rollout's step: only if an unload has not ended the rollout meanwhile);
        returns whether the policy was set. `check`, if given, may refuse it (see Check)."""
        check_model_name(name)

        async def change() -> bool:
            if when is not None and not when():
                return False
            self.registry.set_traffic(name, policy)
            saved = persisted or policy
            await self.save_document(name, "traffic", None if saved is None else saved.document())
            return True

        return await self._change(name, change(), check)

    async def save_document(self, name: str, kind: str, document: Mapping[str, Any] | None) -> None:
        """Persist the model's state of `kind`; a read-only repository keeps it in memory."""
        async with _held_lock(self._writes, (name, kind)):  # FIFO: the last asked, last written
            try:
                await _finished(asyncio.to_thread(self._source.save_document, name, kind, document))
            except OSError as exc:
                logger.warning("model %s: %s is not persisted: %s", name, kind, exc)

    # -- poll mode ----------------------------------------------------------------------
    async def poll_once(self) -> list[LoadResult]:
        """Apply every model whose files changed and then stayed the same for a whole poll
        interval (so a version still being copied is never loaded); unload removed models."""
        names = set(await self.model_names())
        known = {e.name for e in self.registry.models() if not e.unloaded}
        results: list[LoadResult] = []
        for name in sorted(names | known | self._seen.keys()):
            fingerprint = await self._blocking(self._source.fingerprint, name)
            previous = self._seen.get(name, "")
            self._seen[name] = fingerprint
            if fingerprint != previous or fingerprint == self._applied.get(name, ""):
                continue  # still changing, or nothing new
            try:
                if fingerprint is None:
                    self._applied[name] = None
                    if name in known:
                        logger.info("model %s left the repository: unloading", name)
                        results.append(await self.unload(name))
                    continue
                logger.info("model %s changed in the repository: applying", name)
                results.append(await self.load(name))
            except GatewayError as exc:
                logger.error("model %s: %s", name, exc.message)
        return results

    # -- shutdown -----------------------------------------------------------------------
    async def close(self) -> None:
        """Release every session (after the front ends drained and the load pool stopped:
        a change still loading ends at once, its versions shown FAILED)."""
        await asyncio.gather(*list(self._changes), return_exceptions=True)
        for task in list(self._drains):
            task.cancel()
        await asyncio.gather(*list(self._drains), return_exceptions=True)
        versions = list(self.registry.all_versions()) + list(self._draining)
        for version in versions:
            if version.runner is not None:
                version.runner.close()
                version.runner = None


def _held_lock(locks: weakref.WeakValueDictionary[K, asyncio.Lock], key: K) -> asyncio.Lock:
    """The lock of `key` in `locks`, made if no one holds or awaits one now."""
    lock = locks.get(key)
    if lock is None:
        lock = locks[key] = asyncio.Lock()
    return lock


async def _finished(write: Coroutine[Any, Any, None]) -> None:
    """Await a state file's write on its own thread (never the load pool: a write must not
    wait behind warm-ups, and it is done under the model's lock). A caller cancelled meanwhile
    still waits for the thread to finish writing before it lets go of the file's lock, so no
    later write can land before this one."""
    task = asyncio.ensure_future(write)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


def _restored_traffic(snapshot: ModelSnapshot) -> TrafficPolicy | None:
    document = snapshot.documents.get("traffic")
    if document is None:
        return None
    try:
        return parse_policy(document)
    except GatewayError as exc:
        logger.warning("model %s: the saved traffic policy is invalid: %s", snapshot.name, exc)
        return None


def _document_pins(snapshot: ModelSnapshot) -> set[int]:
    """Versions a persisted state document keeps loaded (a running rollout's two versions)."""
    pins: set[int] = set()
    for document in snapshot.documents.values():
        listed = document.get("pinned_versions") if isinstance(document, dict) else None
        if isinstance(listed, list):
            pins |= {v for v in listed if type(v) is int and v > 0}
    return pins


def labels_document(labels: Mapping[str, int]) -> dict[str, str]:
    return {label: str(number) for label, number in sorted(labels.items())}


def require_bool(parameters: Mapping[str, object], key: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInputError(f"parameter '{key}' must be true or false")
    return value
