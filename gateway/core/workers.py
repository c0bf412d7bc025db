"""Threads that run model executions off the event loop: one queue in, one loop callback out.

A batch's hand-off to a thread and back is on every request's path, so it is kept to the least
machinery: the loop puts (work, loop, done) on a SimpleQueue, a worker runs `work` (onnxruntime
releases the GIL while it computes) and posts `done(result, error)` back with one
`loop.call_soon_threadsafe`. concurrent.futures.ThreadPoolExecutor does the same through a
Future with its Condition, a work item and an idle semaphore, each taking and handing back the
GIL: on one core that round trip cost about 80 us of CPU per batch-1 mlp run, against about
25 us here (measured with the model inline on the loop as the zero).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any, Generic, TypeVar

R = TypeVar("R")

logger = logging.getLogger(__name__)

Done = Callable[[Any, BaseException | None], None]
"""Called on the submitter's loop with (result, None) or (None, the error `work` raised)."""


def name_os_thread() -> None:
    """Give the calling thread its Python name at the OS level too (its first 15 characters, as
    Linux keeps them), so that `top -H`, `ps -L` and /proc/<pid>/task/*/comm tell the gateway's
    threads apart: the loadtest bench reads the server's CPU by thread from there. A thread
    initializer; where /proc cannot be written it does nothing."""
    name = threading.current_thread().name.encode("ascii", "replace")[:15]
    with contextlib.suppress(OSError), open("/proc/thread-self/comm", "wb") as comm:
        comm.write(name)


STARTUP_WAIT_S = 10.0
"""How long the first submit waits for the pool's threads to be set up."""


class PoolShutDownError(RuntimeError):
    """The pool was shut down before the work could run; it never ran."""


class _Item(Generic[R]):
    __slots__ = ("done", "loop", "work")

    def __init__(self, work: Callable[[], R], loop: asyncio.AbstractEventLoop, done: Done) -> None:
        self.work, self.loop, self.done = work, loop, done


class WorkerPool:
    """`threads` threads, started by the first submit, that run work in submission order."""

    def __init__(
        self, threads: int, name: str, initializer: Callable[[], None] | None = None
    ) -> None:
        if threads < 1:
            raise ValueError("a worker pool needs at least one thread")
        self.name = name
        self._size = threads
        self._initializer = initializer
        self._queue: SimpleQueue[_Item[Any] | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, work: Callable[[], R], loop: asyncio.AbstractEventLoop, done: Done) -> None:
        """Run `work` on a worker; `done` follows on `loop`. RuntimeError once shut down."""
        with self._lock:
            if self._closed:
                raise PoolShutDownError(f"worker pool '{self.name}' is shut down")
            if not self._threads:
                self._start()
            self._queue.put(_Item(work, loop, done))

    def shutdown(self, wait: bool = True, cancel_pending: bool = True) -> None:
        """Refuse new work; answer work not yet started with PoolShutDownError (or let it run
        when `cancel_pending` is false); stop the threads once they finish what they run."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if cancel_pending:
                self._cancel_pending()
            for _ in self._threads:
                self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _start(self) -> None:
        """Start the threads and return once each one is set up (named, its initializer run:
        a niceness or scheduling policy applies before any work, and is there to be seen)."""
        ready = threading.Barrier(self._size + 1)
        for index in range(self._size):
            thread = threading.Thread(
                target=self._work, args=(ready,), name=f"{self.name}_{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        try:
            ready.wait(timeout=STARTUP_WAIT_S)
        except threading.BrokenBarrierError:  # a thread slow to start still serves; never hang
            logger.warning("worker pool '%s': its threads were slow to start", self.name)

    def _cancel_pending(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except Empty:
                return
            if item is not None:
                error = PoolShutDownError(f"worker pool '{self.name}' shut down before it ran")
                _post(item, None, error)

    def _work(self, ready: threading.Barrier) -> None:
        try:
            name_os_thread()
            if self._initializer is not None:
                try:
                    self._initializer()
                except Exception:  # a thread that cannot be set up still serves work
                    logger.exception("worker pool '%s': the thread initializer failed", self.name)
        finally:
            with contextlib.suppress(threading.BrokenBarrierError):
                ready.wait()
        while (item := self._queue.get()) is not None:
            result: Any = None
            error: BaseException | None = None
            try:
                result = item.work()
            except BaseException as failure:  # handed to `done`, which decides what it means
                error = failure
            _post(item, result, error)
            del item, result, error  # an idle thread keeps no batch (nor its inputs) alive


def _post(item: _Item[Any], result: Any, error: BaseException | None) -> None:
    # A closed loop means its server stopped: nobody waits for the answer any more.
    with contextlib.suppress(RuntimeError):
        item.loop.call_soon_threadsafe(item.done, result, error)
