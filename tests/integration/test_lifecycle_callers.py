"""Changes to the served models whose callers leave halfway (an admin client's deadline, a
dropped connection, the poller stopped at shutdown): the lifecycle and registry of a real
repository, driven directly on one loop, with a repository whose loads wait for the test."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.core.errors import NotFoundError
from gateway.core.lifecycle import ModelLifecycle
from gateway.core.ports import ModelSnapshot
from gateway.core.registry import ModelRegistry, VersionState
from gateway.core.telemetry import Telemetry
from gateway.core.workers import WorkerPool
from gateway.runtime.repository import FileRepository
from tests.support.models import plus_constant, write_config

WAIT_S = 10.0


class GatedRepository(FileRepository):
    """Each version's load waits until the test opens `gate`; `started` counts loads begun."""

    def __init__(self, root: Path) -> None:
        super().__init__(
            root, default_max_batch_size=8, default_intra_op_threads=1, default_concurrency=1
        )
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)

    def load(self, snapshot: ModelSnapshot, number: int) -> Any:
        self.started.release()
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")
        return super().load(snapshot, number)


@dataclass
class Parts:
    root: Path
    source: GatedRepository
    pool: ThreadPoolExecutor
    registry: ModelRegistry
    lifecycle: ModelLifecycle

    def states(self) -> dict[int, tuple[VersionState, str]]:
        versions = self.registry.get_model("m").versions
        return {number: (v.state, v.reason) for number, v in versions.items()}

    async def load_begun(self) -> None:
        assert await asyncio.to_thread(self.source.started.acquire, timeout=WAIT_S)


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    for version in (1, 2):
        plus_constant(tmp_path / "m" / str(version) / "model.onnx", float(version))
    write_config(tmp_path / "m", "max_batch_size: 8\nversion_policy { all { } }\n")
    pool = ThreadPoolExecutor(1)  # one load at a time: version 2 waits behind version 1
    workers = WorkerPool(1, "inference")
    registry = ModelRegistry(workers, telemetry=Telemetry())
    source = GatedRepository(tmp_path)
    lifecycle = ModelLifecycle(registry, source, pool)
    yield Parts(tmp_path, source, pool, registry, lifecycle)
    source.gate.set()
    await lifecycle.close()
    pool.shutdown(wait=True)
    workers.shutdown(wait=True)


async def test_a_load_whose_caller_leaves_still_loads_every_version(parts: Parts) -> None:
    caller = asyncio.create_task(parts.lifecycle.load("m"))
    await parts.load_begun()
    caller.cancel()  # e.g. the admin client's gRPC deadline passed
    await asyncio.gather(caller, return_exceptions=True)
    assert caller.cancelled()
    assert parts.states()[1][0] is VersionState.LOADING
    parts.source.gate.set()
    for _ in range(int(WAIT_S / 0.01)):  # the change goes on without its caller
        if all(state is VersionState.READY for state, _ in parts.states().values()):
            break
        await asyncio.sleep(0.01)
    assert parts.states() == {1: (VersionState.READY, ""), 2: (VersionState.READY, "")}


async def test_a_load_cut_short_at_shutdown_shows_its_versions_failed(parts: Parts) -> None:
    change = asyncio.create_task(parts.lifecycle.load("m"))
    await parts.load_begun()
    parts.pool.shutdown(wait=False, cancel_futures=True)  # version 2's load never starts
    parts.source.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(change, WAIT_S)
    interrupted = (VersionState.FAILED, "the load was interrupted")
    assert parts.states() == {1: interrupted, 2: interrupted}  # not LOADING for good


async def test_a_label_whose_caller_leaves_is_still_saved(parts: Parts) -> None:
    parts.source.gate.set()
    await parts.lifecycle.load("m")
    async with parts.lifecycle._lock("m"):  # another change under way: the label must wait
        caller = asyncio.create_task(parts.lifecycle.set_label("m", "stable", "1"))
        await asyncio.sleep(0.05)
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
    for _ in range(int(WAIT_S / 0.01)):
        if (parts.root / "m" / "labels.json").exists():
            break
        await asyncio.sleep(0.01)
    assert parts.registry.get_model("m").labels == {"stable": 1}
    assert json.loads((parts.root / "m" / "labels.json").read_text()) == {"stable": 1}


async def test_calls_naming_models_that_do_not_exist_leave_nothing_behind(parts: Parts) -> None:
    """Any client may send them (404s): each once left a lock behind for good."""
    for i in range(200):
        with pytest.raises(NotFoundError):
            await parts.lifecycle.unload(f"nope-{i}")
        with pytest.raises(NotFoundError):
            await parts.lifecycle.load(f"nope-{i}")
        with pytest.raises(NotFoundError):
            await parts.lifecycle.set_label(f"nope-{i}", "stable", "1")
    assert len(parts.lifecycle._locks) == 0


async def test_a_state_file_written_last_is_the_one_asked_for_last(parts: Parts) -> None:
    """A writer cancelled while its thread still writes (a slow disk) keeps the file's turn
    until it is done, so the next write is never overtaken by it."""
    slow_started = threading.Event()
    plain = parts.source.save_document

    def slow_save(name: str, kind: str, document: Any) -> None:
        if document == {"state": "running"}:
            slow_started.set()
            time.sleep(0.3)
        plain(name, kind, document)

    parts.source.save_document = slow_save  # type: ignore[method-assign]
    with ThreadPoolExecutor(4) as pool:  # writers on threads enough to overtake each other
        lifecycle = ModelLifecycle(parts.registry, parts.source, pool)
        first = asyncio.create_task(lifecycle.save_document("m", "rollout", {"state": "running"}))
        assert await asyncio.to_thread(slow_started.wait, WAIT_S)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await lifecycle.save_document("m", "rollout", {"state": "aborted"})
        await asyncio.sleep(0.4)
    saved = json.loads((parts.root / "m" / "rollout.json").read_text())
    assert saved == {"state": "aborted"}
