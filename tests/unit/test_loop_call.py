"""How a threaded gRPC worker's call reaches the event loop and ends: exactly once, whether it
completes, fails, is cancelled before or after the loop starts it, or the loop is gone."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.adapters.grpc.threaded import LOOP_CHECK_S, _LoopCall, _Stream
from gateway.core.errors import UnavailableError

WAIT_S = 10.0


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running on its own thread, as the gateway's is for gRPC workers."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    if not running.is_closed():
        running.call_soon_threadsafe(running.stop)
        thread.join(WAIT_S)
        running.close()


def on_loop(loop: asyncio.AbstractEventLoop, coroutine: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(WAIT_S)


def test_a_call_answers_its_result_and_its_error(loop: asyncio.AbstractEventLoop) -> None:
    async def answer() -> int:
        return 42

    async def fail() -> None:
        raise ValueError("broken")

    call = _LoopCall(answer(), loop)
    call.start()
    assert call.wait() == 42
    call = _LoopCall(fail(), loop)
    call.start()
    with pytest.raises(ValueError, match="broken"):
        call.wait()


def test_a_cancel_that_reaches_the_loop_before_the_call_wins(
    loop: asyncio.AbstractEventLoop,
) -> None:
    ran = threading.Event()
    gate = threading.Event()

    async def work() -> None:
        ran.set()

    # Hold the loop so that the cancel is queued before the call's start.
    loop.call_soon_threadsafe(gate.wait, WAIT_S)
    call = _LoopCall(work(), loop)
    call.cancel()  # cancel_all on another thread can come between track() and start()
    call.start()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        call.wait()
    assert not ran.is_set() and call.cancelled


def test_a_cancel_between_the_calls_start_and_its_first_step_ends_it(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The loop starts the call's task, then runs the cancel before the task's first step: the
    coroutine never runs, and the call still ends (cancelled), exactly once."""
    ran = threading.Event()
    gate = threading.Event()
    ended: list[_LoopCall] = []

    async def work() -> None:
        ran.set()

    loop.call_soon_threadsafe(gate.wait, WAIT_S)  # hold the loop: start, then cancel, queue up
    call = _LoopCall(work(), loop, notify=ended.append)
    call.start()
    call.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        call.wait()
    assert not ran.is_set() and call.cancelled and ended == [call]


def test_a_cancel_stops_a_running_call(loop: asyncio.AbstractEventLoop) -> None:
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    call = _LoopCall(forever(), loop)
    call.start()
    assert started.wait(WAIT_S)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        call.wait()


def test_with_the_loop_gone_a_cancel_ends_the_call() -> None:
    ended: list[_LoopCall] = []

    async def never() -> None:
        raise AssertionError("the loop was gone: this never runs")

    loop = asyncio.new_event_loop()  # never run: closed with the call still queued
    call = _LoopCall(never(), loop, notify=ended.append)
    call.start()
    loop.close()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        call.wait()
    assert ended == [call]


def test_a_call_ends_once_and_a_late_cancel_costs_nothing(
    loop: asyncio.AbstractEventLoop,
) -> None:
    ended: list[_LoopCall] = []

    async def answer() -> str:
        return "done"

    call = _LoopCall(answer(), loop, notify=ended.append)
    call.start()
    assert call.wait() == "done"
    on_loop(loop, asyncio.sleep(0))
    loop.call_soon_threadsafe(loop.stop)
    while loop.is_running():
        threading.Event().wait(0.01)
    loop.close()
    call.cancel()  # grpcio calls it at every call's end: no loop needed, no second end
    call.failed(RuntimeError("late"))
    assert ended == [call] and call.result == "done" and call.error is None


def test_a_call_left_in_a_loop_that_stopped_ends_as_unavailable() -> None:
    """The loop stopped with the call queued and no cancel coming (the server failed on its way
    down): the worker does not wait for ever, which would also keep the process from exiting."""

    async def never() -> None:
        raise AssertionError("the loop had stopped: this never runs")

    loop = asyncio.new_event_loop()  # never runs
    try:
        call = _LoopCall(never(), loop)
        call.start()
        started = time.monotonic()
        with pytest.raises(UnavailableError, match="shutting down"):
            call.wait()
        assert time.monotonic() - started < LOOP_CHECK_S + WAIT_S
    finally:
        loop.close()


def test_a_stream_whose_loop_stopped_answers_its_calls_and_ends() -> None:
    loop = asyncio.new_event_loop()  # never runs
    try:
        stream = _Stream()

        async def never() -> None:
            raise AssertionError("the loop had stopped: this never runs")

        call = _LoopCall(never(), loop, functools.partial(stream.answered, "request"))
        stream.started()
        stream.track(call)
        call.start()
        stream.reading_done()
        request, done, _ = stream.next_answer() or (None, None, "")
        assert request == "request" and done is call
        assert isinstance(call.error, UnavailableError)
        assert stream.next_answer() is None  # the last answer ended the stream
    finally:
        loop.close()


def test_a_keyboard_interrupt_on_the_loop_answers_the_call_and_stops_the_loop() -> None:
    """A second Ctrl-C during the drain (the signal handlers are gone by then) is raised on the
    loop: it must stop the loop, not be handed to a worker as the call's error."""

    async def interrupted() -> None:
        raise KeyboardInterrupt

    loop = asyncio.new_event_loop()
    try:
        call = _LoopCall(interrupted(), loop)
        call.start()
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(asyncio.sleep(WAIT_S))
        with pytest.raises(UnavailableError, match="shutting down"):
            call.wait()
    finally:
        loop.close()
