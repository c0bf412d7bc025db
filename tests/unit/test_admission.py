"""AdmissionGate: bounded concurrency, bounded waiting, deadlines, and no lost slots."""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.admission import AdmissionGate
from gateway.core.errors import DeadlineExceededError, OverloadedError


async def test_slots_then_waiting_line_then_refusal() -> None:
    gate = AdmissionGate(concurrency=2, max_waiting=1)
    await gate.acquire(None)
    await gate.acquire(None)
    waiter = asyncio.create_task(gate.acquire(None))
    await asyncio.sleep(0)
    assert gate.running == 2 and gate.waiting == 1
    with pytest.raises(OverloadedError, match="2 running and 1 waiting"):
        await gate.acquire(None)
    gate.release()
    await waiter
    assert gate.running == 2 and gate.waiting == 0


async def test_waiters_are_served_first_come_first_served() -> None:
    gate = AdmissionGate(concurrency=1, max_waiting=10)
    await gate.acquire(None)
    order: list[int] = []

    async def wait(i: int) -> None:
        await gate.acquire(None)
        order.append(i)

    tasks = [asyncio.create_task(wait(i)) for i in range(5)]
    await asyncio.sleep(0)
    for _ in range(5):
        gate.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_deadline_while_waiting() -> None:
    gate = AdmissionGate(concurrency=1, max_waiting=10)
    await gate.acquire(None)
    with pytest.raises(DeadlineExceededError, match=r"waited 0\.010 s"):
        await gate.acquire(0.01)
    assert gate.waiting == 0
    with pytest.raises(DeadlineExceededError, match="before it could run"):
        await gate.acquire(0)
    gate.release()
    assert gate.running == 0


async def test_a_cancelled_waiter_never_loses_a_slot() -> None:
    gate = AdmissionGate(concurrency=1, max_waiting=10)
    await gate.acquire(None)
    leaving = asyncio.create_task(gate.acquire(None))
    staying = asyncio.create_task(gate.acquire(None))
    await asyncio.sleep(0)
    # The slot is handed to `leaving` and it is cancelled in the same instant.
    gate.release()
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await asyncio.wait_for(staying, 1)
    gate.release()
    assert gate.running == 0 and gate.waiting == 0


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        AdmissionGate(concurrency=0, max_waiting=1)
