"""Admission for one model version: bounded concurrent executions and a bounded waiting line.

A request either gets an execution slot, waits for one (at most `max_waiting` wait, each no
longer than its deadline), or is refused at once with OverloadedError. Slots are handed over
first-come first-served; a waiter that leaves (cancelled, timed out) passes on a slot it was
granted in the same instant, so no slot is ever lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from gateway.core.errors import DeadlineExceededError, OverloadedError


class AdmissionGate:
    def __init__(self, concurrency: int, max_waiting: int) -> None:
        if concurrency < 1 or max_waiting < 0:
            raise ValueError("concurrency must be >= 1 and max_waiting >= 0")
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self._free = concurrency
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def running(self) -> int:
        return self.concurrency - self._free

    async def acquire(self, timeout_s: float | None) -> None:
        """Take a slot, waiting at most `timeout_s` (None: no limit)."""
        if timeout_s is not None and timeout_s <= 0:
            raise DeadlineExceededError("the request's deadline passed before it could run")
        if self._free and not self._waiters:
            self._free -= 1
            return
        if len(self._waiters) >= self.max_waiting:
            raise OverloadedError(
                f"the model is at capacity: {self.running} running and {len(self._waiters)} "
                "waiting; retry later"
            )
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(granted)
        try:
            async with asyncio.timeout(timeout_s):
                await granted
        except TimeoutError:
            if not _was_granted(granted):
                raise DeadlineExceededError(
                    f"the request waited {timeout_s:.3f} s for the model and its deadline passed"
                ) from None
            self.release()
            raise DeadlineExceededError(
                "the request's deadline passed as it was admitted"
            ) from None
        except BaseException:
            if _was_granted(granted):
                self.release()
            raise
        finally:
            if not granted.done():
                granted.cancel()
            with contextlib.suppress(ValueError):  # release() may have taken it already
                self._waiters.remove(granted)

    def release(self) -> None:
        """Give a slot back: to the longest waiter still waiting, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


def _was_granted(future: asyncio.Future[None]) -> bool:
    return future.done() and not future.cancelled()
