"""The worker pool that runs batches: answers on the loop, errors handed over, shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from gateway.core.workers import PoolShutDownError, WorkerPool

WAIT_S = 10.0


async def run(pool: WorkerPool, work: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[tuple[Any, BaseException | None]] = loop.create_future()
    where: list[int] = []

    def done(result: Any, error: BaseException | None) -> None:
        where.append(threading.get_ident())
        answer.set_result((result, error))

    pool.submit(work, loop, done)
    outcome = await asyncio.wait_for(answer, WAIT_S)
    assert where == [threading.get_ident()], "done runs on the submitter's loop thread"
    return outcome


async def test_work_runs_on_a_named_worker_thread_and_answers_on_the_loop() -> None:
    pool = WorkerPool(2, "unit")
    try:
        result, error = await run(pool, lambda: threading.current_thread().name)
        assert error is None and result.startswith("unit_")
    finally:
        pool.shutdown()


async def test_an_error_is_handed_to_done_and_the_worker_keeps_going() -> None:
    pool = WorkerPool(1, "unit")

    def fail() -> None:
        raise ValueError("broken")

    try:
        result, error = await run(pool, fail)
        assert result is None and isinstance(error, ValueError)
        assert await run(pool, lambda: 42) == (42, None)
    finally:
        pool.shutdown()


async def test_work_runs_in_submission_order_on_one_thread() -> None:
    pool = WorkerPool(1, "unit")
    seen: list[int] = []
    try:
        outcomes = await asyncio.gather(*(run(pool, lambda i=i: seen.append(i)) for i in range(50)))
        assert seen == list(range(50)) and all(e is None for _, e in outcomes)
    finally:
        pool.shutdown()


async def test_shutdown_answers_work_not_started_and_refuses_new_work() -> None:
    pool = WorkerPool(1, "unit")
    gate, running = threading.Event(), threading.Event()

    def first() -> None:
        running.set()
        gate.wait()

    loop = asyncio.get_running_loop()
    answers: list[asyncio.Future[BaseException | None]] = []
    for work in (first, gate.wait, gate.wait):  # the first runs, at the gate; two wait in line
        answer: asyncio.Future[BaseException | None] = loop.create_future()
        answers.append(answer)
        pool.submit(work, loop, lambda _r, e, a=answer: a.set_result(e))
    assert await asyncio.to_thread(running.wait, WAIT_S)  # not a sleep: a slow host lags
    stopping = asyncio.create_task(asyncio.to_thread(pool.shutdown, wait=True))
    errors = [await asyncio.wait_for(a, WAIT_S) for a in answers[1:]]
    assert all(isinstance(e, PoolShutDownError) for e in errors)
    gate.set()  # the running one finishes normally
    assert await asyncio.wait_for(answers[0], WAIT_S) is None
    await asyncio.wait_for(stopping, WAIT_S)
    with pytest.raises(PoolShutDownError):
        pool.submit(lambda: None, loop, lambda _r, _e: None)


async def test_the_initializer_runs_on_every_thread() -> None:
    started: list[str] = []
    lock = threading.Lock()

    def note() -> None:
        with lock:
            started.append(threading.current_thread().name)

    pool = WorkerPool(3, "init", initializer=note)
    try:
        await run(pool, lambda: None)
    finally:
        pool.shutdown(wait=True)
    assert sorted(started) == ["init_0", "init_1", "init_2"]


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        WorkerPool(0, "none")


async def test_a_failing_initializer_is_logged_and_the_thread_still_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> None:
        raise OSError("no such priority")

    pool = WorkerPool(1, "broken", initializer=broken)
    try:
        with caplog.at_level(logging.ERROR):
            assert await run(pool, lambda: 7) == (7, None)
        assert any("initializer failed" in r.getMessage() for r in caplog.records)
    finally:
        pool.shutdown()
