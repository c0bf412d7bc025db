"""A rollout meeting unloads, aborts that are cancelled, the last step's stable version, and
shadow copies outliving their primary: the controller, lifecycle, registry and shadow
dispatcher of a real repository, driven directly on one loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from gateway.core.admin import Admitted
from gateway.core.errors import InvalidInputError
from gateway.core.feedback import FeedbackStore
from gateway.core.lifecycle import ModelLifecycle
from gateway.core.registry import ModelRegistry, VersionState
from gateway.core.rollout import RolloutController
from gateway.core.service import InferenceService
from gateway.core.shadow import ShadowDispatcher
from gateway.core.telemetry import Telemetry
from gateway.core.traffic import Tolerance
from gateway.core.types import InferRequest, RequestContext, Tensor
from gateway.core.workers import WorkerPool
from gateway.runtime.repository import FileRepository
from tests.support.models import plus_constant, write_config


@dataclass
class Parts:
    root: Path
    registry: ModelRegistry
    lifecycle: ModelLifecycle
    rollouts: RolloutController

    def saved(self, kind: str) -> dict[str, object]:
        document: dict[str, object] = json.loads((self.root / "m" / f"{kind}.json").read_text())
        return document


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    for version in (1, 2):
        plus_constant(tmp_path / "m" / str(version) / "model.onnx", float(version))
    write_config(tmp_path / "m", "max_batch_size: 8\nversion_policy { all { } }\n")
    pool = ThreadPoolExecutor(2)
    telemetry = Telemetry()
    workers = WorkerPool(2, "inference")
    registry = ModelRegistry(workers, telemetry=telemetry, shadow_workers=workers)
    source = FileRepository(
        tmp_path, default_max_batch_size=8, default_intra_op_threads=1, default_concurrency=1
    )
    lifecycle = ModelLifecycle(registry, source, pool)
    rollouts = RolloutController(
        lifecycle, ShadowDispatcher(telemetry), FeedbackStore(), telemetry=telemetry
    )
    lifecycle.add_listener(rollouts)
    await lifecycle.load("m")
    yield Parts(tmp_path, registry, lifecycle, rollouts)
    await rollouts.close()
    await lifecycle.close()
    pool.shutdown(wait=True)
    workers.shutdown(wait=True)


PLAN = {"to": "2", "from": "1", "steps": [50, 100], "step_interval_s": 3600}


async def test_an_unload_then_a_load_at_once_does_not_bring_the_rollout_back(
    parts: Parts,
) -> None:
    await parts.rollouts.start("m", dict(PLAN))
    await parts.lifecycle.unload("m")
    await parts.lifecycle.load("m")  # before the aborted state reached the disk
    assert parts.rollouts.active("m") is None
    assert parts.rollouts.status("m")["state"] == "aborted"
    traffic = parts.registry.get_model("m").traffic
    assert traffic is not None and dict(traffic.weights) == {1: 100}
    await asyncio.sleep(0.2)
    assert parts.saved("rollout")["state"] == "aborted"


async def test_a_cancelled_abort_still_ends_the_rollout(parts: Parts) -> None:
    await parts.rollouts.start("m", dict(PLAN))
    async with parts.lifecycle._lock("m"):  # a model load under way: the abort must wait
        abort = asyncio.create_task(parts.rollouts.abort("m"))
        await asyncio.sleep(0.05)
        abort.cancel()  # e.g. the caller's gRPC deadline
        await asyncio.gather(abort, return_exceptions=True)
    await asyncio.sleep(0.2)
    assert parts.rollouts.status("m")["state"] == "aborted"
    traffic = parts.registry.get_model("m").traffic
    assert traffic is not None and dict(traffic.weights) == {1: 100} and not traffic.shadows
    assert parts.saved("rollout")["state"] == "aborted"


async def test_the_stable_version_stays_loaded_at_the_last_step(parts: Parts) -> None:
    write_config(parts.root / "m", "max_batch_size: 8\n")  # the version policy: latest 1 only
    await parts.rollouts.start("m", {**PLAN, "steps": [100]})
    result = await parts.lifecycle.load("m")
    assert result.unloaded == ()  # weight 0 at the last step, but named: kept to roll back to
    assert parts.registry.get_model("m").versions[1].state is VersionState.READY
    await parts.rollouts.abort("m")
    traffic = parts.registry.get_model("m").traffic
    assert traffic is not None and dict(traffic.weights) == {1: 100}


async def test_a_shadow_copy_outliving_its_primary_is_judged_by_the_primary_s_rule(
    parts: Parts,
) -> None:
    """An unload or reload may take the primary out of service (and its config with it) while
    a shadow copy of one of its requests still runs: the copy must be compared as the pair
    always is (both versions: argmax of 4 scores, the same class), not fall back to numbers
    (they differ by 1) and count a disagreement that could roll a rollout back."""
    primary, shadow = parts.registry.resolve("m", "1"), parts.registry.resolve("m", "2")
    dispatcher = ShadowDispatcher(Telemetry())
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    answer: asyncio.Future[Sequence[Tensor] | None] = asyncio.get_running_loop().create_future()
    request = InferRequest("m", "", [Tensor("X", "FP32", x)])
    dispatcher.submit(request, primary, shadow, answer, Tolerance(), "http")
    parts.registry.begin_drain(primary)  # the primary leaves service before the comparison
    parts.registry.finish_drain(primary)
    answer.set_result([Tensor("Y", "FP32", x + 1)])
    await dispatcher.wait_idle()
    pair = dispatcher.pair("m", 1, 2)
    assert (pair.agree, pair.disagree, pair.error) == (1, 0, 0)


async def test_an_unload_while_a_rollout_starts_leaves_it_aborted(parts: Parts) -> None:
    """The start's first weights wait for the model's lock, an unload right behind them: the
    unload aborts the rollout before the start goes on, which must not make it run again."""
    async with parts.lifecycle._lock("m"):  # both queue on the model's lock, start first
        starting = asyncio.create_task(parts.rollouts.start("m", dict(PLAN)))
        await asyncio.sleep(0.05)
        unloading = asyncio.create_task(parts.lifecycle.unload("m"))
        await asyncio.sleep(0.05)
    started = await starting
    await unloading
    assert started["state"] == "aborted"
    assert parts.rollouts.active("m") is None
    await parts.lifecycle.load("m")  # what the load reads must not bring the rollout back
    await asyncio.sleep(0.2)
    assert parts.rollouts.status("m")["state"] == "aborted"
    assert parts.saved("rollout")["state"] == "aborted"
    traffic = parts.registry.get_model("m").traffic
    assert traffic is not None and dict(traffic.weights) == {1: 100}


async def test_an_abort_queued_behind_an_unload_ends_the_rollout_once(parts: Parts) -> None:
    """The unload ends the rollout first (aborted, counted, saved); the abort that waited for
    the model's lock must not end it a second time (counted twice, noted twice)."""
    await parts.rollouts.start("m", dict(PLAN))
    async with parts.lifecycle._lock("m"):  # the unload queues first, the abort's end behind it
        unloading = asyncio.create_task(parts.lifecycle.unload("m"))
        await asyncio.sleep(0.05)
        aborting = asyncio.create_task(parts.rollouts.abort("m"))
        await asyncio.sleep(0.05)
    await unloading
    answer = await aborting
    assert answer["state"] == "aborted"
    assert parts.rollouts.outcomes[("m", "aborted")] == 1
    notes = [entry["reason"] for entry in answer["history"]]
    assert notes[-1] == "aborted: the model was unloaded" and len(notes) == 2
    assert parts.saved("rollout")["state"] == "aborted"


@pytest.mark.parametrize("change", ["label", "unlabel", "traffic"])
async def test_a_change_queued_before_a_rollout_started_is_refused_when_its_turn_comes(
    parts: Parts, change: str
) -> None:
    """An admin change that passed the front end while the model's lock was held (a load under
    way), and a rollout that started meanwhile: by its turn the change would fight the rollout
    (its `stable` label moved back at promotion, its weights replaced at the next step), so it
    is refused then, not only when it arrives."""
    service = InferenceService(
        parts.registry, version="test", lifecycle=parts.lifecycle, rollouts=parts.rollouts
    )
    admin = Admitted("test", "127.0.0.1")
    work = {
        "label": lambda: service.set_label(admin, "m", "stable", "2"),
        "unlabel": lambda: service.delete_label(admin, "m", "stable"),
        "traffic": lambda: service.set_traffic(admin, "m", {"weights": {"2": 100}}),
    }[change]
    await parts.lifecycle.set_label("m", "stable", "1")
    async with parts.lifecycle._lock("m"):  # a load under way: both queue on the model's lock
        changing = asyncio.create_task(work())
        await asyncio.sleep(0.05)
        starting = asyncio.create_task(parts.rollouts.start("m", dict(PLAN)))
        await asyncio.sleep(0.05)
    with pytest.raises(InvalidInputError, match="abort it first"):
        await changing
    assert (await starting)["state"] == "running"
    assert parts.registry.get_model("m").labels == {"stable": 1}
    traffic = parts.registry.get_model("m").traffic
    assert traffic is not None and dict(traffic.weights) == {1: 50, 2: 50}


async def test_routed_requests_no_version_takes_stay_out_of_the_rollout_s_windows(
    parts: Parts,
) -> None:
    """Requests routed by the policy (not pinned) that both versions refuse are answered 400
    and left out of both versions' windows; the well-formed ones between them are counted."""
    service = InferenceService(
        parts.registry, version="test", lifecycle=parts.lifecycle, rollouts=parts.rollouts
    )
    service.start_accepting()
    await parts.rollouts.start("m", dict(PLAN))  # 50 % to each version
    rollout = parts.rollouts.active("m")
    assert rollout is not None
    ctx = RequestContext("http")
    three = InferRequest("m", "", [Tensor("X", "FP32", np.zeros((1, 3), np.float32))])
    four = InferRequest("m", "", [Tensor("X", "FP32", np.zeros((1, 4), np.float32))])
    for _ in range(20):
        with pytest.raises(InvalidInputError, match="shape"):
            await service.infer(three, ctx)
        await service.infer(four, ctx)
    counts = {version: (w.requests, w.errors) for version, w in rollout.windows.items()}
    assert set(counts) == {"1", "2"}, counts  # both versions took requests
    assert sum(requests for requests, _ in counts.values()) == 20, counts
    assert all(errors == 0 for _, errors in counts.values()), counts
