"""DynamicBatcher on its own: real ModelRunners (numpy test doubles) on a real thread pool.

Ordering is controlled with a gated runner: each execution announces itself to the test and
then waits for a permit, so "while a batch runs" is a fact, not a race. Sleeps appear only
where the queue delay itself is what is measured, with generous bounds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.core.batcher import BatcherConfig, BatcherStats, DynamicBatcher
from gateway.core.errors import (
    DeadlineExceededError,
    InternalError,
    InvalidInputError,
    OverloadedError,
    UnavailableError,
)
from gateway.core.ports import ModelRunner
from gateway.core.workers import WorkerPool

Array = npt.NDArray[Any]
OUTPUTS = ("DOUBLE", "PLUS1")
"""The test model's outputs, in model order: DOUBLE = X * 2, PLUS1 = X + 1."""
WAIT_S = 5.0
"""Upper bound on any wait for something that should happen at once (fails instead of hangs)."""
BAD_INPUT, CRASH = 7, 8
"""Request ids whose rows make FailingRunner raise a GatewayError or a plain exception."""


# -- requests and their expected answers ------------------------------------------------------


def feed(
    request_id: int, rows: int = 1, width: int = 3, dtype: Any = np.float32
) -> dict[str, Array]:
    """Distinct values per request and row: id * 1000 + row * 10 + column."""
    values = request_id * 1000 + np.arange(rows)[:, None] * 10 + np.arange(width)[None, :]
    return {"X": values.astype(dtype)}


def compute(x: Array, outputs: Sequence[str]) -> list[Array]:
    table = {"DOUBLE": lambda: x * 2, "PLUS1": lambda: x + 1}
    return [table[name]() for name in outputs]


def assert_answer(got: list[Array], feeds: Mapping[str, Array], outputs: Sequence[str]) -> None:
    """Exactly the outputs asked for, in the order asked, for exactly this request's rows."""
    want = compute(feeds["X"], outputs)
    assert len(got) == len(want)
    for name, g, w in zip(outputs, got, want, strict=True):
        assert g.dtype == w.dtype, name
        assert g.shape == w.shape, name
        np.testing.assert_array_equal(g, w, err_msg=name)


# -- runners: real implementations of the ModelRunner protocol --------------------------------


@dataclass(frozen=True)
class Run:
    """One execution as the runner saw it."""

    request_ids: tuple[int, ...]
    rows: int
    outputs: tuple[str, ...]
    dtype: np.dtype
    width: int


class ArithRunner:
    """DOUBLE = X * 2, PLUS1 = X + 1; records every execution."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self._lock = threading.Lock()

    def run(self, inputs: Mapping[str, Array], output_names: Sequence[str]) -> list[Array]:
        self.record(inputs, output_names)
        return self.compute(inputs["X"], output_names)

    def record(self, inputs: Mapping[str, Array], output_names: Sequence[str]) -> Run:
        x = inputs["X"]
        ids = tuple(dict.fromkeys(int(v) // 1000 for v in x[:, 0]))
        run = Run(ids, x.shape[0], tuple(output_names), x.dtype, x.shape[1])
        with self._lock:
            self.runs.append(run)
        return run

    def compute(self, x: Array, output_names: Sequence[str]) -> list[Array]:
        return compute(x, output_names)

    def seen(self) -> set[int]:
        return {i for run in self.runs for i in run.request_ids}

    def close(self) -> None:
        pass


class GatedRunner(ArithRunner):
    """Each execution announces itself on `started`, then waits for a permit from `release`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._started: asyncio.Queue[Run] = asyncio.Queue()
        self._permits = threading.Semaphore(0)
        self._active = 0
        self.max_active = 0

    def run(self, inputs: Mapping[str, Array], output_names: Sequence[str]) -> list[Array]:
        run = self.record(inputs, output_names)
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        self._loop.call_soon_threadsafe(self._started.put_nowait, run)
        try:
            if not self._permits.acquire(timeout=WAIT_S):
                raise TimeoutError("the test never released this execution")
            return self.compute(inputs["X"], output_names)
        finally:
            with self._lock:
                self._active -= 1

    def release(self, executions: int = 1) -> None:
        self._permits.release(executions)

    async def next_start(self) -> Run:
        return await asyncio.wait_for(self._started.get(), WAIT_S)


class FailingRunner(GatedRunner):
    """Raises a GatewayError for a batch holding request BAD_INPUT, a ValueError for CRASH."""

    def compute(self, x: Array, output_names: Sequence[str]) -> list[Array]:
        ids = {int(v) // 1000 for v in x[:, 0]}
        if BAD_INPUT in ids:
            raise InvalidInputError("input 'X' holds a value the model rejects")
        if CRASH in ids:
            raise ValueError("boom")
        return super().compute(x, output_names)


class WrongRowsRunner(GatedRunner):
    """Drops the last row of every output when it runs more than one row."""

    def compute(self, x: Array, output_names: Sequence[str]) -> list[Array]:
        arrays = super().compute(x, output_names)
        return [a[:-1] for a in arrays] if x.shape[0] > 1 else arrays


def _implements_protocol(runner: ModelRunner) -> ModelRunner:
    return runner  # typed as the port: a type checker flags a double that does not fit it


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def workers() -> Iterator[WorkerPool]:
    pool = WorkerPool(4, "test-inference")
    yield pool
    pool.shutdown(wait=True, cancel_pending=True)


# Each gated fixture depends on `workers` so that it is torn down first: anything still held
# is released before the pool is joined.


@pytest.fixture
async def gated(workers: WorkerPool) -> AsyncIterator[GatedRunner]:
    runner = GatedRunner(asyncio.get_running_loop())
    yield runner
    runner.release(1000)


@pytest.fixture
async def failing(workers: WorkerPool) -> AsyncIterator[GatedRunner]:
    runner = FailingRunner(asyncio.get_running_loop())
    yield runner
    runner.release(1000)


@pytest.fixture
async def wrong_rows(workers: WorkerPool) -> AsyncIterator[GatedRunner]:
    runner = WrongRowsRunner(asyncio.get_running_loop())
    yield runner
    runner.release(1000)


def make(
    runner: ModelRunner,
    workers: WorkerPool,
    *,
    max_batch_size: int = 8,
    merge: bool = True,
    concurrency: int = 1,
    max_queue_size: int = 64,
    max_queue_bytes: int = 2**30,
    delay_s: float = 0.0,
    preferred: tuple[int, ...] = (),
    returning_wait_s: float = 0.0,
    solo_on_loop_s: float = 0.0,
    level_queue_sizes: dict[int, int] | None = None,
) -> DynamicBatcher:
    config = BatcherConfig(
        max_batch_size=max_batch_size,
        merge=merge,
        concurrency=concurrency,
        max_queue_size=max_queue_size,
        max_queue_bytes=max_queue_bytes,
        max_queue_delay_s=delay_s,
        preferred_batch_sizes=preferred,
        returning_wait_s=returning_wait_s,
        solo_on_loop_s=solo_on_loop_s,
        level_queue_sizes=level_queue_sizes or {},
    )
    return DynamicBatcher("m:1", _implements_protocol(runner), workers, config, OUTPUTS)


def submit(
    batcher: DynamicBatcher,
    feeds: Mapping[str, Array],
    outputs: Sequence[str] = OUTPUTS,
    timeout_s: float | None = None,
    solo: bool = False,
    level: int = 0,
    delay_s: float | None = None,
) -> asyncio.Task[list[Array]]:
    rows = feeds["X"].shape[0]
    infer = batcher.infer(
        feeds, list(outputs), rows, timeout_s, solo=solo, level=level, delay_s=delay_s
    )
    return asyncio.create_task(infer)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the loop (no time passes) until `condition` holds."""
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def hold(
    batcher: DynamicBatcher, runner: GatedRunner, request_id: int = 0
) -> asyncio.Task[list[Array]]:
    """Start request `request_id` alone and return its task once its execution is running."""
    task = submit(batcher, feed(request_id))
    assert (await runner.next_start()).request_ids == (request_id,)
    return task


# -- merging ----------------------------------------------------------------------------------


async def test_requests_arriving_while_a_batch_runs_are_merged_into_the_next(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers)
    first = await hold(batcher, gated)
    feeds = {i: feed(i, rows=1 + i % 2) for i in range(1, 5)}  # 2 + 1 + 2 + 1 rows
    tasks = {i: submit(batcher, f) for i, f in feeds.items()}
    await until(lambda: batcher.waiting == 4, "four requests in line")
    assert batcher.running == 1 and batcher.stats.batches == 1

    gated.release(2)
    assert_answer(await first, feed(0), OUTPUTS)
    for i, task in tasks.items():
        assert_answer(await task, feeds[i], OUTPUTS)
    assert [run.request_ids for run in gated.runs] == [(0,), (1, 2, 3, 4)]
    assert [run.rows for run in gated.runs] == [1, 6]
    assert batcher.stats == BatcherStats(batches=2, rows=7, requests=5)


class LateRunner(GatedRunner):
    """As it returns from its first execution, hands the loop a callback that starts one more
    request: the loop runs it before the batch's end, but the request's first step (joining the
    line) after it, as with a request the loop read just before the batch ended."""

    late: asyncio.Task[list[Array]] | None = None
    batcher: DynamicBatcher | None = None

    def compute(self, x: Array, output_names: Sequence[str]) -> list[Array]:
        if self.batcher is not None and self.late is None and len(self.runs) == 1:
            self._loop.call_soon_threadsafe(self._start_late)
        return super().compute(x, output_names)

    def _start_late(self) -> None:
        assert self.batcher is not None
        self.late = submit(self.batcher, feed(9))


async def test_the_next_batch_forms_a_loop_turn_after_one_ends_taking_late_arrivals(
    workers: WorkerPool,
) -> None:
    runner = LateRunner(asyncio.get_running_loop())
    batcher = runner.batcher = make(runner, workers)
    try:
        first = await hold(batcher, runner)
        waiting = submit(batcher, feed(1))
        await until(lambda: batcher.waiting == 1, "a request in line")

        runner.release(3)  # enough for the late request to run alone, were it left behind
        assert_answer(await first, feed(0), OUTPUTS)
        assert_answer(await waiting, feed(1), OUTPUTS)
        assert runner.late is not None
        assert_answer(await runner.late, feed(9), OUTPUTS)
        assert [run.request_ids for run in runner.runs] == [(0,), (1, 9)]
    finally:
        runner.release(1000)


async def test_a_line_that_fills_a_batch_launches_it_at_once(
    workers: WorkerPool,
) -> None:
    runner = LateRunner(asyncio.get_running_loop())
    batcher = runner.batcher = make(runner, workers, max_batch_size=2)
    try:
        first = await hold(batcher, runner)
        waiting = [submit(batcher, feed(i)) for i in (1, 2)]
        await until(lambda: batcher.waiting == 2, "two requests in line")

        runner.release(3)
        for i, task in zip((0, 1, 2), [first, *waiting], strict=True):
            assert_answer(await task, feed(i), OUTPUTS)
        assert runner.late is not None
        assert_answer(await runner.late, feed(9), OUTPUTS)
        assert [run.request_ids for run in runner.runs] == [(0,), (1, 2), (9,)]
    finally:
        runner.release(1000)


async def test_max_batch_size_is_never_exceeded_and_counts_rows(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers, max_batch_size=4)
    first = await hold(batcher, gated)
    rows = {1: 3, 2: 2, 3: 1, 4: 2, 5: 4, 6: 1}
    feeds = {i: feed(i, rows=r) for i, r in rows.items()}
    tasks = {i: submit(batcher, f) for i, f in feeds.items()}
    await until(lambda: batcher.waiting == len(rows), "all requests in line")

    gated.release(100)
    await first
    for i, task in tasks.items():
        assert_answer(await task, feeds[i], OUTPUTS)
    assert all(run.rows <= 4 for run in gated.runs), gated.runs
    for run in gated.runs:  # the runner saw each request's rows, whole, once
        assert run.rows == sum(rows.get(i, 1) for i in run.request_ids)
    ran = [i for run in gated.runs for i in run.request_ids]
    assert sorted(ran) == [0, *rows]
    assert not any({1, 2} <= set(run.request_ids) for run in gated.runs)  # 3 + 2 rows > 4
    assert len(gated.runs) < 1 + len(rows)  # and yet something was merged
    stats = batcher.stats
    assert (stats.batches, stats.rows, stats.requests) == (len(gated.runs), 14, 7)


async def test_incompatible_requests_never_share_a_batch_but_all_run(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers)
    first = await hold(batcher, gated)
    kinds = {
        1: (3, np.float32),
        2: (4, np.float32),  # another non-batch dim
        3: (3, np.float64),  # another dtype
        4: (3, np.float32),
        5: (4, np.float32),
        6: (3, np.float64),
    }
    feeds = {i: feed(i, rows=2, width=w, dtype=d) for i, (w, d) in kinds.items()}
    tasks = {i: submit(batcher, f) for i, f in feeds.items()}
    await until(lambda: batcher.waiting == len(kinds), "all requests in line")

    gated.release(100)
    await first
    for i, task in tasks.items():
        assert_answer(await task, feeds[i], OUTPUTS)
    later = gated.runs[1:]
    groups = sorted(run.request_ids for run in later)
    assert groups == [(1, 4), (2, 5), (3, 6)]
    for run in later:
        assert {(run.width, run.dtype)} == {
            (kinds[i][0], np.dtype(kinds[i][1])) for i in run.request_ids
        }


async def test_each_caller_gets_exactly_the_outputs_it_asked_for_in_its_order(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers)
    first = await hold(batcher, gated)
    asked = {1: ["DOUBLE"], 2: ["PLUS1"], 3: ["PLUS1", "DOUBLE"], 4: ["DOUBLE", "PLUS1"]}
    feeds = {i: feed(i, rows=1 + i % 2) for i in asked}
    tasks = {i: submit(batcher, feeds[i], outputs) for i, outputs in asked.items()}
    await until(lambda: batcher.waiting == len(asked), "all requests in line")
    gated.release(2)
    await first
    assert (await gated.next_start()).request_ids == (1, 2, 3, 4)
    for i, task in tasks.items():
        assert_answer(await task, feeds[i], asked[i])
    assert gated.runs[1].request_ids == (1, 2, 3, 4)
    assert gated.runs[1].outputs == OUTPUTS  # the union, in model order

    # A batch whose callers all want one output computes only that one.
    second = await hold(batcher, gated, 10)
    tasks = {i: submit(batcher, feed(i), ["PLUS1"]) for i in (11, 12)}
    await until(lambda: batcher.waiting == 2, "two requests in line")
    gated.release(2)
    await second
    for i, task in tasks.items():
        assert_answer(await task, feed(i), ["PLUS1"])
    assert gated.runs[-1] == Run((11, 12), 2, ("PLUS1",), np.dtype(np.float32), 3)


async def test_without_merging_each_request_runs_alone(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers, merge=False)
    first = await hold(batcher, gated)
    feeds = {i: feed(i, rows=2) for i in (1, 2, 3)}
    tasks = {i: submit(batcher, f) for i, f in feeds.items()}
    await until(lambda: batcher.waiting == 3, "three requests in line")
    gated.release(4)
    await first
    for i, task in tasks.items():
        assert_answer(await task, feeds[i], OUTPUTS)
    assert [run.request_ids for run in gated.runs] == [(0,), (1,), (2,), (3,)]
    assert batcher.stats == BatcherStats(batches=4, rows=7, requests=4)


# -- queue delay and preferred sizes ----------------------------------------------------------


async def test_queue_delay_holds_a_lone_request_about_that_long(
    workers: WorkerPool,
) -> None:
    runner = ArithRunner()
    batcher = make(runner, workers, delay_s=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert_answer(await batcher.infer(feed(1), list(OUTPUTS), 1, None), feed(1), OUTPUTS)
    waited = loop.time() - started
    assert 0.09 <= waited < 0.6
    assert batcher.stats == BatcherStats(batches=1, rows=1, requests=1)


async def test_queue_delay_gathers_company_for_the_head(workers: WorkerPool) -> None:
    runner = ArithRunner()
    batcher = make(runner, workers, delay_s=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = submit(batcher, feed(1))
    await asyncio.sleep(0.02)  # arrives later, but well within the delay
    second = submit(batcher, feed(2, rows=2))
    assert_answer(await asyncio.wait_for(first, WAIT_S), feed(1), OUTPUTS)
    assert_answer(await second, feed(2, rows=2), OUTPUTS)
    assert 0.28 <= loop.time() - started < 1.0  # dispatched by the head's delay, not sooner
    assert [run.request_ids for run in runner.runs] == [(1, 2)]


@pytest.mark.parametrize(
    ("max_batch_size", "preferred", "rows"),
    [
        pytest.param(4, (), [2, 2], id="batch-full"),
        pytest.param(8, (3,), [1, 2], id="preferred-size"),
        pytest.param(8, (2, 4), [1, 1], id="smaller-preferred-size"),
        pytest.param(8, (2,), [1, 3], id="past-largest-preferred"),
    ],
)
async def test_queue_delay_ends_early_when_the_batch_is_ready(
    workers: WorkerPool, max_batch_size: int, preferred: tuple[int, ...], rows: list[int]
) -> None:
    runner = ArithRunner()
    batcher = make(
        runner, workers, max_batch_size=max_batch_size, delay_s=30.0, preferred=preferred
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    feeds = [feed(i, rows=r) for i, r in enumerate(rows, 1)]
    answers = await asyncio.wait_for(asyncio.gather(*(submit(batcher, f) for f in feeds)), WAIT_S)
    for answer, f in zip(answers, feeds, strict=True):
        assert_answer(answer, f, OUTPUTS)
    assert loop.time() - started < 1.0
    assert [run.request_ids for run in runner.runs] == [(1, 2)]


# -- deadlines, cancellation, overload ---------------------------------------------------------


# -- priority levels and timeout_action DELAY ---------------------------------------------------


async def test_the_line_serves_priority_levels_in_order_and_arrivals_within_each(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers, max_batch_size=2)
    first = await hold(batcher, gated)
    levels = {1: 3, 2: 1, 3: 2, 4: 3, 5: 1, 6: 2, 7: 1}  # request id -> level
    tasks = {i: submit(batcher, feed(i), level=level) for i, level in levels.items()}
    await until(lambda: batcher.waiting == 7, "seven requests in line")
    gated.release(100)
    assert_answer(await first, feed(0), OUTPUTS)
    for i, task in tasks.items():
        assert_answer(await task, feed(i), OUTPUTS)
    assert [run.request_ids for run in gated.runs] == [(0,), (2, 5), (7, 3), (6, 1), (4,)]


async def test_a_full_priority_level_refuses_while_the_others_take_requests(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers, max_queue_size=3, level_queue_sizes={1: 1})
    first = await hold(batcher, gated)
    waiting = [submit(batcher, feed(1), level=1), submit(batcher, feed(2), level=2)]
    await until(lambda: batcher.waiting == 2, "two requests in line")
    with pytest.raises(OverloadedError, match="1 at priority level 1"):
        await submit(batcher, feed(3), level=1)
    waiting += [submit(batcher, feed(4), level=2), submit(batcher, feed(5), level=2)]
    await until(lambda: batcher.waiting == 4, "four requests in line")
    with pytest.raises(OverloadedError, match="3 at priority level 2"):
        await submit(batcher, feed(6), level=2)
    gated.release(100)
    assert_answer(await first, feed(0), OUTPUTS)
    for task, i in zip(waiting, (1, 2, 4, 5), strict=True):
        assert_answer(await task, feed(i), OUTPUTS)
    assert batcher.stats.refused == 2


async def test_a_delayed_request_waits_behind_its_level_and_ahead_of_the_levels_below(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    """timeout_action DELAY: request 1's timeout passes while it waits; it is not refused but
    moves behind request 2 (same level, in time), still ahead of request 3 (the level below)."""
    batcher = make(gated, workers, merge=False)
    first = await hold(batcher, gated)
    delayed = submit(batcher, feed(1), level=1, delay_s=0.05)
    patient = submit(batcher, feed(2), level=1)
    below = submit(batcher, feed(3), level=2)
    await until(lambda: batcher.waiting == 3, "three requests in line")
    await asyncio.sleep(0.15)
    gated.release(100)
    for task, i in ((first, 0), (delayed, 1), (patient, 2), (below, 3)):
        assert_answer(await task, feed(i), OUTPUTS)
    assert [run.request_ids for run in gated.runs] == [(0,), (2,), (1,), (3,)]
    assert batcher.stats.expired == 0


async def test_a_delayed_request_still_expires_at_its_deadline(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers)
    first = await hold(batcher, gated)
    late = submit(batcher, feed(1), timeout_s=0.15, delay_s=0.05)
    await asyncio.sleep(0.25)
    with pytest.raises(DeadlineExceededError, match="it was not run"):
        await late
    assert batcher.waiting == 0
    gated.release(100)
    assert_answer(await first, feed(0), OUTPUTS)
    assert [run.request_ids for run in gated.runs] == [(0,)]


@pytest.mark.parametrize("case", ["a-higher-level-arrives", "the-oldest-is-delayed"])
async def test_the_queue_delay_runs_from_the_oldest_request_of_the_batch(
    workers: WorkerPool, case: str
) -> None:
    """max_queue_delay 0.3 s from request 1's arrival, whoever heads the line: request 2 (a
    higher level, or the head once request 1 is delayed) arrives 0.2 s later and must not
    push the launch to 0.5 s."""
    runner = ArithRunner()
    batcher = make(runner, workers, delay_s=0.3)
    started = time.monotonic()
    if case == "a-higher-level-arrives":
        oldest = submit(batcher, feed(1), level=2)
        await asyncio.sleep(0.2)
        younger = submit(batcher, feed(2), level=1)
    else:
        oldest = submit(batcher, feed(1), level=1, delay_s=0.1)
        await asyncio.sleep(0.2)
        younger = submit(batcher, feed(2), level=1)
    assert_answer(await oldest, feed(1), OUTPUTS)
    waited_s = time.monotonic() - started
    assert_answer(await younger, feed(2), OUTPUTS)
    assert [run.request_ids for run in runner.runs] == [(2, 1)]
    assert 0.29 <= waited_s < 0.45, waited_s


# -- waiting for returning callers ------------------------------------------------------------


async def test_the_next_batch_waits_for_the_callers_of_the_last_to_come_back(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers, returning_wait_s=WAIT_S)
    first = await hold(batcher, gated)
    second = submit(batcher, feed(1))
    await until(lambda: batcher.waiting == 1, "request 1 in line")
    gated.release(2)
    assert_answer(await first, feed(0), OUTPUTS)
    await until(lambda: batcher.running == 0, "batch (0,) over")
    for _ in range(5):  # request 1 alone is short of its target (1 waiting + 1 answered)
        await asyncio.sleep(0)
    assert batcher.waiting == 1 and batcher.running == 0
    third = submit(batcher, feed(2))  # request 0's caller comes back
    assert (await gated.next_start()).request_ids == (1, 2)
    assert_answer(await second, feed(1), OUTPUTS)
    assert_answer(await third, feed(2), OUTPUTS)


async def test_a_lone_callers_next_request_does_not_wait(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers, returning_wait_s=WAIT_S)
    gated.release(2)
    assert_answer(await submit(batcher, feed(0)), feed(0), OUTPUTS)
    started = time.monotonic()
    assert_answer(await submit(batcher, feed(1)), feed(1), OUTPUTS)
    assert time.monotonic() - started < WAIT_S / 5
    assert [run.request_ids for run in gated.runs] == [(0,), (1,)]


async def test_callers_that_do_not_come_back_are_waited_for_no_longer_than_the_wait(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers, returning_wait_s=0.05)
    first = await hold(batcher, gated)
    second = submit(batcher, feed(1))
    await until(lambda: batcher.waiting == 1, "request 1 in line")
    gated.release(2)
    assert_answer(await first, feed(0), OUTPUTS)
    ended = time.monotonic()
    assert (await gated.next_start()).request_ids == (1,)
    assert 0.04 <= time.monotonic() - ended < WAIT_S
    assert_answer(await second, feed(1), OUTPUTS)


def test_the_wait_timer_survives_uvloop_handing_back_a_plain_handle(workers: WorkerPool) -> None:
    """uvloop's call_at returns a Handle without when() for a time already past (seen under
    load: the due time passed between computing it and arming the timer)."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        runner = ArithRunner()
        batcher = make(runner, workers, returning_wait_s=0.05)
        loop = asyncio.get_running_loop()
        batcher._arm_timer(loop.time() - 1)
        batcher._arm_timer(loop.time() + 1)
        assert_answer(await batcher.infer(feed(1), list(OUTPUTS), 1, None), feed(1), OUTPUTS)

    uvloop.run(scenario())


async def test_a_deadline_passing_in_line_fails_the_request_which_never_runs(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers)
    # Dispatched at once: once it runs, its own deadline no longer interrupts it.
    first = submit(batcher, feed(0), timeout_s=0.05)
    await gated.next_start()
    late = submit(batcher, feed(1), timeout_s=0.05)
    patient = submit(batcher, feed(2))
    with pytest.raises(DeadlineExceededError, match="deadline passed"):
        await asyncio.wait_for(late, WAIT_S)
    assert batcher.waiting == 1

    gated.release(2)
    assert_answer(await first, feed(0), OUTPUTS)
    assert_answer(await patient, feed(2), OUTPUTS)
    assert gated.seen() == {0, 2}
    assert batcher.stats == BatcherStats(batches=2, rows=2, requests=2, expired=1)


@pytest.mark.parametrize("timeout_s", [0.0, -1.0])
async def test_a_deadline_already_past_is_refused_without_queueing(
    workers: WorkerPool, timeout_s: float
) -> None:
    runner = ArithRunner()
    batcher = make(runner, workers)
    with pytest.raises(DeadlineExceededError):
        await batcher.infer(feed(1), list(OUTPUTS), 1, timeout_s)
    assert runner.runs == [] and batcher.waiting == 0
    assert batcher.stats == BatcherStats(expired=1)


async def test_a_cancelled_waiter_leaves_the_line_and_its_mates_are_answered(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers)
    first = await hold(batcher, gated)
    tasks = {i: submit(batcher, feed(i, rows=2)) for i in (1, 2, 3)}
    await until(lambda: batcher.waiting == 3, "three requests in line")
    tasks[2].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[2]
    assert batcher.waiting == 2

    gated.release(2)
    await first
    for i in (1, 3):
        assert_answer(await tasks[i], feed(i, rows=2), OUTPUTS)
    assert [run.request_ids for run in gated.runs] == [(0,), (1, 3)]
    assert batcher.stats == BatcherStats(batches=2, rows=5, requests=3)


async def test_cancelling_the_queue_delay_head_lets_the_next_request_lead(
    workers: WorkerPool,
) -> None:
    runner = ArithRunner()
    batcher = make(runner, workers, max_batch_size=2, delay_s=30.0)
    head = submit(batcher, feed(1))
    await until(lambda: batcher.waiting == 1, "the head in line")
    head.cancel()
    with pytest.raises(asyncio.CancelledError):
        await head
    assert batcher.waiting == 0
    answers = await asyncio.wait_for(
        asyncio.gather(submit(batcher, feed(2)), submit(batcher, feed(3))), WAIT_S
    )
    assert_answer(answers[0], feed(2), OUTPUTS)
    assert_answer(answers[1], feed(3), OUTPUTS)
    assert [run.request_ids for run in runner.runs] == [(2, 3)]


async def test_cancelling_a_caller_whose_batch_runs_does_not_affect_the_others(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers)
    first = await hold(batcher, gated)
    tasks = {i: submit(batcher, feed(i, rows=i)) for i in (1, 2, 3)}
    await until(lambda: batcher.waiting == 3, "three requests in line")
    gated.release(1)
    await first
    assert (await gated.next_start()).request_ids == (1, 2, 3)
    tasks[2].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[2]
    assert batcher.running == 1  # the slot stays taken until the execution really ends

    gated.release(1)
    for i in (1, 3):
        assert_answer(await tasks[i], feed(i, rows=i), OUTPUTS)
    await asyncio.wait_for(batcher.wait_idle(), WAIT_S)
    gated.release(1)
    assert_answer(await submit(batcher, feed(4)), feed(4), OUTPUTS)
    assert batcher.stats == BatcherStats(batches=3, rows=1 + 6 + 1, requests=5)


async def test_a_full_line_refuses_at_once(workers: WorkerPool, gated: GatedRunner) -> None:
    batcher = make(gated, workers, max_queue_size=2)
    first = await hold(batcher, gated)  # running, so not in line
    tasks = [submit(batcher, feed(i)) for i in (1, 2)]
    await until(lambda: batcher.waiting == 2, "two requests in line")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(OverloadedError, match="at capacity") as raised:
        await batcher.infer(feed(3), list(OUTPUTS), 1, None)
    assert loop.time() - started < 0.1
    assert raised.value.retry_after_s > 0
    assert batcher.stats.refused == 1 and batcher.waiting == 2

    gated.release(100)
    await first
    for i, task in zip((1, 2), tasks, strict=True):
        assert_answer(await task, feed(i), OUTPUTS)
    assert_answer(await submit(batcher, feed(4)), feed(4), OUTPUTS)  # room again
    assert 3 not in gated.seen()


async def test_the_line_is_bounded_in_bytes_too(workers: WorkerPool, gated: GatedRunner) -> None:
    row_bytes = feed(0)["X"].nbytes  # 12 bytes: 3 float32
    batcher = make(gated, workers, max_queue_bytes=3 * row_bytes)
    first = await hold(batcher, gated)
    waiting = submit(batcher, feed(1, rows=2))  # 24 bytes in line
    await until(lambda: batcher.waiting == 1, "one request in line")
    with pytest.raises(OverloadedError, match=r"\(24 bytes\) waiting"):
        await batcher.infer(feed(2, rows=2), list(OUTPUTS), 2, None)  # 48 > 36
    small = submit(batcher, feed(3))  # 36 bytes: fits exactly
    await until(lambda: batcher.waiting == 2, "two requests in line")
    gated.release(100)
    await first
    assert_answer(await waiting, feed(1, rows=2), OUTPUTS)
    assert_answer(await small, feed(3), OUTPUTS)
    # An empty line takes one request even beyond the budget: it runs alone.
    assert_answer(await submit(batcher, feed(4, rows=4)), feed(4, rows=4), OUTPUTS)


async def test_string_inputs_count_their_payload_against_the_line_s_bytes(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers, max_queue_bytes=100_000)
    first = await hold(batcher, gated)
    strings = {"X": np.array([[b"x" * 60_000]], dtype=object)}  # 8 bytes of pointer
    waiting = submit(batcher, strings)
    await until(lambda: batcher.waiting == 1, "the strings in line")
    with pytest.raises(OverloadedError, match=r"\(60008 bytes\) waiting"):
        await batcher.infer(strings, list(OUTPUTS), 1, None)
    waiting.cancel()
    gated.release(100)
    assert_answer(await first, feed(0), OUTPUTS)


async def test_a_caller_cancelled_in_the_turn_its_batch_forms_is_not_run(
    workers: WorkerPool,
) -> None:
    runner = ArithRunner()
    batcher = make(runner, workers, max_batch_size=2, delay_s=30.0)
    left = submit(batcher, feed(1))
    await until(lambda: batcher.waiting == 1, "the first request waits for company")
    arriving = submit(batcher, feed(2))  # its first step would fill the batch with request 1
    left.cancel()  # in the same turn: request 1's own step (its _leave) comes after
    third = submit(batcher, feed(3))
    answers = await asyncio.wait_for(asyncio.gather(arriving, third), WAIT_S)
    assert_answer(answers[0], feed(2), OUTPUTS)
    assert_answer(answers[1], feed(3), OUTPUTS)
    assert left.cancelled()
    assert [run.request_ids for run in runner.runs] == [(2, 3)]
    assert batcher.waiting == 0


async def test_a_mate_past_its_deadline_is_never_launched_even_if_its_timer_is_late(
    workers: WorkerPool,
) -> None:
    runner = ArithRunner()
    batcher = make(runner, workers, max_batch_size=3, delay_s=30.0)
    patient = submit(batcher, feed(1))
    late = submit(batcher, feed(2), timeout_s=0.02)
    await until(lambda: batcher.waiting == 2, "two requests wait for company")
    time.sleep(0.05)  # noqa: ASYNC251 -- block the loop: the deadline passes, its timer waits
    # Both arrivals run before the late timer (due timers queue behind ready callbacks): the
    # first would fill a batch of three with request 2 in it.
    arrivals = [submit(batcher, feed(i)) for i in (3, 4)]
    answers = await asyncio.wait_for(asyncio.gather(patient, *arrivals), WAIT_S)
    for i, answer in zip((1, 3, 4), answers, strict=True):
        assert_answer(answer, feed(i), OUTPUTS)
    with pytest.raises(DeadlineExceededError, match=r"waited 0\.020 s"):
        await late
    assert [run.request_ids for run in runner.runs] == [(1, 3, 4)]
    assert batcher.stats.expired == 1


async def test_a_request_past_its_deadline_is_never_launched_even_if_its_timer_is_late(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers)
    first = await hold(batcher, gated)
    late = submit(batcher, feed(1), timeout_s=0.02)
    await until(lambda: batcher.waiting == 1, "one request in line")
    time.sleep(0.05)  # noqa: ASYNC251 -- block the loop: the deadline passes, its timer waits
    gated.release(100)
    await first  # this completion dispatches the line before the expiry timer fires
    with pytest.raises(DeadlineExceededError, match=r"waited 0\.020 s"):
        await late
    assert 1 not in gated.seen()
    assert batcher.stats.expired == 1


# -- failures ---------------------------------------------------------------------------------


async def test_a_runner_error_on_a_callers_values_fails_only_the_request_that_fails_alone(
    workers: WorkerPool, failing: GatedRunner
) -> None:
    """The batch [BAD_INPUT, 1] fails; its halves run apart, ahead of the line, and merge with
    no one: BAD_INPUT gets its own run's error, request 1 its answer, [2, 3] are untouched."""
    batcher = make(failing, workers, max_batch_size=2)
    first = await hold(batcher, failing)
    order = [BAD_INPUT, 1, 2, 3]  # batches [BAD_INPUT, 1] and [2, 3]
    tasks = {i: submit(batcher, feed(i)) for i in order}
    await until(lambda: batcher.waiting == 4, "four requests in line")
    failing.release(100)
    assert_answer(await first, feed(0), OUTPUTS)
    with pytest.raises(InvalidInputError, match="value the model rejects"):
        await tasks[BAD_INPUT]
    for i in (1, 2, 3):
        assert_answer(await tasks[i], feed(i), OUTPUTS)
    runs = [run.request_ids for run in failing.runs]
    assert runs == [(0,), (BAD_INPUT, 1), (BAD_INPUT,), (1,), (2, 3)]
    assert batcher.stats.split == 1
    assert_answer(await submit(batcher, feed(4)), feed(4), OUTPUTS)


async def test_a_server_side_runner_failure_fails_exactly_that_batch(
    workers: WorkerPool, failing: GatedRunner
) -> None:
    """Not the caller's values (here a plain exception, a bug): nothing to find by running the
    requests apart, so the batch's requests fail together and the next batch runs."""
    batcher = make(failing, workers, max_batch_size=2)
    first = await hold(batcher, failing)
    tasks = {i: submit(batcher, feed(i)) for i in (CRASH, 1, 2, 3)}
    await until(lambda: batcher.waiting == 4, "four requests in line")
    failing.release(100)
    assert_answer(await first, feed(0), OUTPUTS)
    raised = []
    for i in (CRASH, 1):
        with pytest.raises(InternalError, match="model 'm:1'") as caught:
            await tasks[i]
        raised.append(caught.value)
    assert raised[0] is not raised[1]  # each caller gets its own exception
    for i in (2, 3):
        assert_answer(await tasks[i], feed(i), OUTPUTS)
    assert [run.request_ids for run in failing.runs] == [(0,), (CRASH, 1), (2, 3)]
    assert batcher.stats.split == 0


class RejectingRunner(GatedRunner):
    """Raises InvalidInputError for any run holding a request id in `bad`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, bad: set[int]) -> None:
        super().__init__(loop)
        self.bad = bad

    def compute(self, x: Array, output_names: Sequence[str]) -> list[Array]:
        ids = {int(v) // 1000 for v in x[:, 0]}
        if ids & self.bad:
            raise InvalidInputError(f"requests {sorted(ids & self.bad)} hold a bad value")
        return super().compute(x, output_names)


@pytest.mark.parametrize(
    ("bad", "runs"),
    [
        pytest.param({13}, 1 + 2 * 3, id="one-bad-of-eight"),  # 8 -> 4 + 4 -> 2 + 2 -> 1 + 1
        pytest.param(set(range(10, 18)), 2 * 8 - 1, id="all-bad"),
        pytest.param({10, 17}, 1 + 2 + 4 + 4, id="two-bad-apart"),
    ],
)
async def test_a_failed_batch_is_halved_until_each_request_that_fails_alone_is_found(
    workers: WorkerPool, bad: set[int], runs: int
) -> None:
    runner = RejectingRunner(asyncio.get_running_loop(), bad)
    try:
        batcher = make(runner, workers, max_batch_size=16)
        first = await hold(batcher, runner)
        feeds = {i: feed(i, rows=1 + i % 2) for i in range(10, 18)}  # 12 rows, one batch
        tasks = {i: submit(batcher, f) for i, f in feeds.items()}
        await until(lambda: batcher.waiting == 8, "eight requests in line")
        runner.release(1000)
        assert_answer(await first, feed(0), OUTPUTS)
        for i, task in tasks.items():
            if i in bad:
                with pytest.raises(InvalidInputError, match=rf"requests \[{i}\] hold"):
                    await task  # its own run's error: it ran alone
            else:
                assert_answer(await task, feeds[i], OUTPUTS)
        assert runner.runs[1].request_ids == tuple(range(10, 18))
        assert len(runner.runs) - 1 == runs
        assert {len(run.request_ids) for run in runner.runs[2:]} <= {1, 2, 4}
    finally:
        runner.release(1000)


@pytest.mark.parametrize("leaving", [1, BAD_INPUT])
async def test_the_one_caller_left_of_a_failed_batch_runs_alone(
    workers: WorkerPool, failing: GatedRunner, leaving: int
) -> None:
    """Of [1, BAD_INPUT], one caller leaves while the batch runs: the other runs again alone,
    so it gets its own answer (or its own error), never its departed batch-mate's."""
    batcher = make(failing, workers)
    first = await hold(batcher, failing)
    tasks = {i: submit(batcher, feed(i)) for i in (1, BAD_INPUT)}
    await until(lambda: batcher.waiting == 2, "two requests in line")
    failing.release(1)
    assert_answer(await first, feed(0), OUTPUTS)
    assert (await failing.next_start()).request_ids == (1, BAD_INPUT)
    tasks[leaving].cancel()
    failing.release(100)
    (staying,) = {1, BAD_INPUT} - {leaving}
    if staying == 1:
        assert_answer(await tasks[1], feed(1), OUTPUTS)
    else:
        with pytest.raises(InvalidInputError):
            await tasks[BAD_INPUT]
    assert [run.request_ids for run in failing.runs] == [(0,), (1, BAD_INPUT), (staying,)]
    assert batcher.waiting == 0


async def test_a_deadline_that_passed_during_the_failed_run_is_answered_not_rerun(
    workers: WorkerPool, failing: GatedRunner
) -> None:
    batcher = make(failing, workers)
    first = await hold(batcher, failing)
    bad = submit(batcher, feed(BAD_INPUT))
    hurried = submit(batcher, feed(1), timeout_s=0.2)
    patient = submit(batcher, feed(2))
    await until(lambda: batcher.waiting == 3, "three requests in line")
    failing.release(1)
    assert_answer(await first, feed(0), OUTPUTS)
    assert (await failing.next_start()).request_ids == (BAD_INPUT, 1, 2)
    await asyncio.sleep(0.3)  # the hurried request's deadline passes while the batch runs
    failing.release(100)
    with pytest.raises(DeadlineExceededError, match=r"failed .*value the model rejects"):
        await hurried
    with pytest.raises(InvalidInputError):
        await bad
    assert_answer(await patient, feed(2), OUTPUTS)
    assert [run.request_ids for run in failing.runs] == [
        (0,),
        (BAD_INPUT, 1, 2),
        (BAD_INPUT,),
        (2,),
    ]


async def test_a_deadline_passing_while_a_half_waits_answers_it_in_line(
    workers: WorkerPool, failing: GatedRunner
) -> None:
    """[BAD_INPUT, 1] fails at once; [BAD_INPUT] then runs, held, while request 1's deadline
    passes in line behind it: 1 is answered by its timer, never run again."""
    batcher = make(failing, workers)
    first = await hold(batcher, failing)
    bad = submit(batcher, feed(BAD_INPUT))
    hurried = submit(batcher, feed(1), timeout_s=0.3)
    await until(lambda: batcher.waiting == 2, "two requests in line")
    failing.release(2)  # request 0, then the merged batch
    assert_answer(await first, feed(0), OUTPUTS)
    assert (await failing.next_start()).request_ids == (BAD_INPUT, 1)
    assert (await failing.next_start()).request_ids == (BAD_INPUT,)
    with pytest.raises(DeadlineExceededError, match="before it could run apart"):
        await hurried
    assert batcher.waiting == 0
    failing.release(100)
    with pytest.raises(InvalidInputError):
        await bad
    assert [run.request_ids for run in failing.runs] == [(0,), (BAD_INPUT, 1), (BAD_INPUT,)]
    assert batcher.stats.expired == 1


async def test_an_unexpected_runner_exception_is_logged_and_answered_generically(
    workers: WorkerPool, failing: GatedRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """DESIGN.md section 8: anything unexpected is a 500 with generic text; STYLE.md: messages
    safe to show a client, tracebacks only in the log."""
    batcher = make(failing, workers)
    failing.release(100)
    with caplog.at_level(logging.ERROR), pytest.raises(InternalError) as raised:
        await batcher.infer(feed(CRASH), list(OUTPUTS), 1, None)
    assert "boom" not in raised.value.message, "the runner's own text reaches the client"
    assert any(r.levelno >= logging.ERROR and r.exc_info for r in caplog.records), (
        "no traceback was logged for an unexpected runner exception"
    )


class ExitingRunner(ArithRunner):
    """Raises SystemExit (a BaseException, not an Exception) on its first run only."""

    def run(self, inputs: Mapping[str, Array], output_names: Sequence[str]) -> list[Array]:
        if not self.runs:
            self.record(inputs, output_names)
            raise SystemExit("raised on the inference thread")
        return super().run(inputs, output_names)


async def test_a_base_exception_from_the_runner_fails_its_batch_not_the_loop(
    workers: WorkerPool,
) -> None:
    batcher = make(ExitingRunner(), workers)
    with pytest.raises(InternalError, match="model 'm:1' failed"):
        await batcher.infer(feed(0), list(OUTPUTS), 1, None)
    assert_answer(await submit(batcher, feed(1)), feed(1), OUTPUTS)  # the loop goes on
    assert batcher.running == 0 and batcher.waiting == 0


class BuggyBatcher(DynamicBatcher):
    """A batcher whose batch forming raises while `broken` (a bug, as the uvloop timer was)."""

    broken = False

    def _collect(self) -> Any:
        if self.broken:
            raise AttributeError("a bug")
        return super()._collect()


async def test_a_bug_while_dispatching_answers_the_line_and_strands_no_one(
    workers: WorkerPool, gated: GatedRunner, caplog: pytest.LogCaptureFixture
) -> None:
    config = make(gated, workers).config
    batcher = BuggyBatcher("m:1", gated, workers, config, OUTPUTS)
    first = await hold(batcher, gated)
    waiting = [submit(batcher, feed(i)) for i in (1, 2)]
    await until(lambda: batcher.waiting == 2, "two requests in line")
    batcher.broken = True
    with caplog.at_level(logging.ERROR, logger="gateway.core.batcher"):
        gated.release()
        assert_answer(await first, feed(0), OUTPUTS)
        for task in waiting:  # answered with an error, not left waiting for a dispatch
            with pytest.raises(InternalError, match="model 'm:1' failed"):
                await asyncio.wait_for(task, WAIT_S)
        # A request whose own arrival hits the bug is not left in line either.
        with pytest.raises(InternalError):
            await asyncio.wait_for(submit(batcher, feed(3)), WAIT_S)
    assert "dispatching its line failed" in caplog.text
    assert batcher.waiting == 0 and batcher.running == 0
    batcher.broken = False
    gated.release()
    assert_answer(await submit(batcher, feed(4)), feed(4), OUTPUTS)  # and it goes on serving


async def test_a_wrong_first_dimension_fails_the_batch_with_internal_error(
    workers: WorkerPool, wrong_rows: GatedRunner
) -> None:
    batcher = make(wrong_rows, workers)
    first = await hold(batcher, wrong_rows)
    tasks = {i: submit(batcher, feed(i, rows=i)) for i in (1, 2)}
    await until(lambda: batcher.waiting == 2, "two requests in line")
    wrong_rows.release(100)
    await first
    for task in tasks.values():
        with pytest.raises(InternalError, match="3 rows"):
            await task
    assert_answer(await submit(batcher, feed(3)), feed(3), OUTPUTS)  # the batcher goes on
    assert batcher.running == 0 and batcher.waiting == 0


# -- concurrency, idleness, shutdown ------------------------------------------------------------


async def test_concurrency_two_runs_two_batches_at_once_and_no_more(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers, max_batch_size=1, concurrency=2)
    tasks = {i: submit(batcher, feed(i)) for i in range(5)}
    first, second = await gated.next_start(), await gated.next_start()
    assert {first.request_ids, second.request_ids} == {(0,), (1,)}
    await until(lambda: batcher.waiting == 3, "three requests in line")
    assert batcher.running == 2

    gated.release(1)
    assert (await gated.next_start()).request_ids == (2,)
    assert batcher.running == 2 and batcher.waiting == 2
    gated.release(100)
    for i, task in tasks.items():
        assert_answer(await task, feed(i), OUTPUTS)
    assert gated.max_active == 2
    assert batcher.stats == BatcherStats(batches=5, rows=5, requests=5)


async def test_wait_idle_returns_when_everything_is_done(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    batcher = make(gated, workers)
    await asyncio.wait_for(batcher.wait_idle(), WAIT_S)  # nothing yet
    first = await hold(batcher, gated)
    tasks = [submit(batcher, feed(i)) for i in (1, 2)]
    await until(lambda: batcher.waiting == 2, "two requests in line")
    idle = asyncio.create_task(batcher.wait_idle())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not idle.done()

    gated.release(1)
    await first
    assert not idle.done()  # the next batch is running
    gated.release(1)
    await asyncio.wait_for(idle, WAIT_S)
    assert batcher.running == 0 and batcher.waiting == 0
    for i, task in zip((1, 2), tasks, strict=True):
        assert_answer(await task, feed(i), OUTPUTS)


async def test_wait_idle_returns_when_the_line_empties_by_cancellation(
    workers: WorkerPool,
) -> None:
    batcher = make(ArithRunner(), workers, delay_s=30.0)
    task = submit(batcher, feed(1))
    await until(lambda: batcher.waiting == 1, "the request in line")
    idle = asyncio.create_task(batcher.wait_idle())
    await asyncio.sleep(0)
    assert not idle.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(idle, WAIT_S)


async def test_a_shut_down_executor_answers_unavailable() -> None:
    pool = WorkerPool(1, "test-inference")
    pool.shutdown()
    runner = ArithRunner()
    batcher = make(runner, pool)
    with pytest.raises(UnavailableError, match="shutting down"):
        await batcher.infer(feed(1), list(OUTPUTS), 1, None)
    assert runner.runs == [] and batcher.stats.batches == 0
    await asyncio.wait_for(batcher.wait_idle(), WAIT_S)


async def test_requests_in_line_when_the_executor_shuts_down_are_answered_unavailable() -> None:
    pool = WorkerPool(1, "test-inference")
    gated = GatedRunner(asyncio.get_running_loop())
    try:
        batcher = make(gated, pool)
        first = await hold(batcher, gated)
        tasks = [submit(batcher, feed(i)) for i in (1, 2)]
        await until(lambda: batcher.waiting == 2, "two requests in line")
        pool.shutdown(wait=False)  # the running execution still finishes
        gated.release(1)
        assert_answer(await first, feed(0), OUTPUTS)
        for task in tasks:
            with pytest.raises(UnavailableError, match="shutting down"):
                await task
        await asyncio.wait_for(batcher.wait_idle(), WAIT_S)
        assert gated.seen() == {0}
    finally:
        gated.release(1000)
        await asyncio.to_thread(pool.shutdown, wait=True)


async def test_a_batch_the_executor_cancels_at_shutdown_is_answered_unavailable() -> None:
    """Gateway.stop shuts the pool down with cancel_pending=True: a batch submitted but not
    yet started never runs, and its callers should hear that the server is shutting down."""
    pool = WorkerPool(
        1, "test-inference"
    )  # one thread, two slots: the second batch waits in the pool
    gated = GatedRunner(asyncio.get_running_loop())
    try:
        batcher = make(gated, pool, max_batch_size=1, concurrency=2)
        first = await hold(batcher, gated)
        second = submit(batcher, feed(1))
        await until(lambda: batcher.running == 2, "the second batch submitted to the pool")
        pool.shutdown(wait=False, cancel_pending=True)
        with pytest.raises(UnavailableError):
            await asyncio.wait_for(second, WAIT_S)
        gated.release(1)
        assert_answer(await first, feed(0), OUTPUTS)
        await asyncio.wait_for(batcher.wait_idle(), WAIT_S)
        assert gated.seen() == {0}
    finally:
        gated.release(1000)
        await asyncio.to_thread(pool.shutdown, wait=True)


# -- solo requests on the loop ----------------------------------------------------------------


class ThreadRecordingRunner(ArithRunner):
    """Records the thread each execution ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def run(self, inputs: Mapping[str, Array], output_names: Sequence[str]) -> list[Array]:
        self.threads.append(threading.current_thread().name)
        return super().run(inputs, output_names)


async def test_a_solo_one_row_request_runs_on_the_loop_once_a_short_run_was_timed(
    workers: WorkerPool,
) -> None:
    """The first one-row run is timed on a worker; after it, a solo request whose model ran
    short runs on the loop, and its caller gets its own rows as always."""
    runner = ThreadRecordingRunner()
    batcher = make(runner, workers, solo_on_loop_s=10.0)
    loop_thread = threading.current_thread().name
    for request_id in range(3):
        feeds = feed(request_id)
        assert_answer(await submit(batcher, feeds, solo=True), feeds, OUTPUTS)
    assert runner.threads[0] != loop_thread
    assert runner.threads[1:] == [loop_thread, loop_thread]
    assert batcher.stats == BatcherStats(batches=3, rows=3, requests=3, on_loop=2)


async def test_only_a_solo_one_row_request_on_an_idle_batcher_runs_on_the_loop(
    workers: WorkerPool, gated: GatedRunner
) -> None:
    loop_thread = threading.current_thread().name
    recording = ThreadRecordingRunner()
    batcher = make(recording, workers, solo_on_loop_s=10.0)
    await submit(batcher, feed(0), solo=True)  # timed on a worker
    await submit(batcher, feed(1), solo=False)  # not solo: a worker
    await submit(batcher, feed(2, rows=2), solo=True)  # two rows: a worker
    assert loop_thread not in recording.threads
    never = make(recording, workers, solo_on_loop_s=0.0)  # --solo-on-loop-us 0
    await submit(never, feed(3), solo=True)
    await submit(never, feed(4), solo=True)
    assert loop_thread not in recording.threads and never.stats.on_loop == 0
    # Nothing else may be running: a solo request arriving while a batch runs waits for it.
    batcher = make(gated, workers, solo_on_loop_s=10.0, concurrency=2)
    gated.release()
    await submit(batcher, feed(5), solo=True)  # timed (on a worker: never the gate on the loop)
    assert (await gated.next_start()).request_ids == (5,)
    first = await hold(batcher, gated, 6)
    second = submit(batcher, feed(7), solo=True)
    assert (await gated.next_start()).request_ids == (7,)  # on a worker: the gate did not block
    gated.release(2)
    assert_answer(await first, feed(6), OUTPUTS)
    assert_answer(await second, feed(7), OUTPUTS)
    assert batcher.stats.on_loop == 0


async def test_a_model_whose_one_row_run_is_long_never_runs_on_the_loop(
    workers: WorkerPool,
) -> None:
    runner = ThreadRecordingRunner()
    batcher = make(runner, workers, solo_on_loop_s=1e-9)  # every run takes longer than 1 ns
    for request_id in range(3):
        await submit(batcher, feed(request_id), solo=True)
    assert batcher.stats.on_loop == 0
    assert threading.current_thread().name not in runner.threads


async def test_a_runner_error_on_the_loop_fails_only_that_request_and_the_batcher_goes_on(
    workers: WorkerPool,
) -> None:
    class Failing(ThreadRecordingRunner):
        def compute(self, x: Array, output_names: Sequence[str]) -> list[Array]:
            if int(x[0, 0]) // 1000 == CRASH:
                raise ValueError("boom")
            return super().compute(x, output_names)

    runner = Failing()
    batcher = make(runner, workers, solo_on_loop_s=10.0)
    await submit(batcher, feed(0), solo=True)
    with pytest.raises(InternalError, match="failed"):
        await submit(batcher, feed(CRASH), solo=True)
    assert_answer(await submit(batcher, feed(1), solo=True), feed(1), OUTPUTS)
    assert batcher.stats.on_loop == 2


async def test_a_request_larger_than_the_timed_one_runs_on_a_worker(workers: WorkerPool) -> None:
    """A model with dynamic non-batch dimensions may run longer on larger inputs."""
    runner = ThreadRecordingRunner()
    batcher = make(runner, workers, solo_on_loop_s=10.0)
    await submit(batcher, feed(0, width=3), solo=True)  # timed, 3 values
    await submit(batcher, feed(1, width=6), solo=True)  # larger: a worker
    await submit(batcher, feed(2, width=3), solo=True)  # no larger: the loop
    loop_thread = threading.current_thread().name
    assert [name == loop_thread for name in runner.threads] == [False, False, True]


def test_a_keyboard_interrupt_in_a_run_on_the_loop_answers_the_batch_and_stops_the_loop(
    workers: WorkerPool,
) -> None:
    class Interrupted(ThreadRecordingRunner):
        def compute(self, x: Array, output_names: Sequence[str]) -> list[Array]:
            if int(x[0, 0]) // 1000 == CRASH:
                raise KeyboardInterrupt
            return super().compute(x, output_names)

    loop = asyncio.new_event_loop()
    try:
        batcher = make(Interrupted(), workers, solo_on_loop_s=10.0)
        loop.run_until_complete(submit_on(batcher, feed(0)))  # timed on a worker
        task = loop.create_task(batcher.infer(feed(CRASH), list(OUTPUTS), 1, None, solo=True))
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(task)
        assert task.done() and isinstance(task.exception(), KeyboardInterrupt)
        assert batcher.stats.on_loop == 1 and batcher.running == 0 and batcher.waiting == 0
    finally:
        loop.close()


async def submit_on(batcher: DynamicBatcher, feeds: Mapping[str, Array]) -> list[Array]:
    return await batcher.infer(feeds, list(OUTPUTS), 1, None, solo=True)


async def test_a_flushed_line_runs_without_waiting_for_company(workers: WorkerPool) -> None:
    """A version leaving service: company will not come, so its queue delay is not waited."""
    runner = ArithRunner()
    batcher = make(runner, workers, max_batch_size=8, delay_s=3600.0)
    waiting = [submit(batcher, feed(i)) for i in (1, 2)]
    await until(lambda: batcher.waiting == 2, "two requests wait for company")
    batcher.flush()
    answers = await asyncio.wait_for(asyncio.gather(*waiting), WAIT_S)
    for i, answer in zip((1, 2), answers, strict=True):
        assert_answer(answer, feed(i), OUTPUTS)
    assert_answer(await asyncio.wait_for(submit(batcher, feed(3)), WAIT_S), feed(3), OUTPUTS)
