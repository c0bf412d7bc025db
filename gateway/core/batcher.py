"""Dynamic batching for one model version: queue requests, merge compatible ones, run, split.

Requests wait in one line, first come first served. Whenever a request arrives or a batch
finishes, the batcher forms a batch from the request at the head of the line and every later
request compatible with it (same input names, datatypes and non-batch dimensions), in line
order, up to max_batch_size rows, and runs it on the runtime's thread pool. At most
`concurrency` batches run at once (Triton's instance_group count); while they run, the line
fills, so batches grow with load even without a queue delay. When a batch ends with requests
waiting (fewer than fill a batch), the next one is formed a loop turn later, ahead of the
finished batch's answers: requests the loop has read but not yet queued (each is a task whose
first step waits its turn) join it. On a busy core that makes batches 10-20 % bigger for the
price of a loop turn. With a delay, a batch smaller than max_batch_size (or than a preferred
size) waits up to max_queue_delay for company.

Triton's delay holds a lone request too. The gateway's `returning_wait_microseconds` parameter
(one instance, no max_queue_delay) waits only for callers expected back: when a batch ends, the
next may wait up to that long to hold the rows then in line plus the finished batch's, as the
callers of a closed loop send their next requests once answered. A lone caller's next request
completes its target and launches at once; under heavy load the line fills a batch anyway. For
a model that is the bottleneck on a shared core, bigger batches cost less per row, and the core
answers and reads requests meanwhile.

A solo request (no other caller in flight, as the front ends count them: gateway/core/callers.py)
that finds nothing in line or running runs on the event loop itself when the
version's last one-row run took less than `solo_on_loop_s` (--solo-on-loop-us, 1 ms by default):
the hand-off to an inference thread and back costs a lone caller more than the loop's pause.
The first one-row run of a version is timed on a thread; a longer run turns it off until a
shorter one is timed again. Under load no call is solo, and batches form as before.

When a run of several requests fails on a caller's values (the runner's InvalidInputError: an
index out of range answers "the model cannot run on this input"), the batcher does not fail
them all: its batch-mates did nothing wrong. The failed batch goes back to the head of the line
in two halves that run apart, and so on down, so the requests that fail alone get their own
run's error and the others their answers. One bad request among n costs about 2 log2(n) more
runs, of shrinking sizes; if every request fails, 2n - 1 runs in all. Other failures (the
server's: memory, device, a bug), a run of a single request, an answer of the wrong shape or a
server that is stopping fail the batch's requests as before.

With Triton's priority levels the line is ordered by level (1 first), then arrival: a request
joins behind those of its level and ahead of the levels below. Each level has its queue policy
(its max_queue_size here; its timeouts in the service). With timeout_action DELAY, a request
whose policy timeout passes is not refused: it moves behind every request of its level whose
timeout has not passed (ahead of the levels below) and waits on.

A request waits at most until its deadline; if that passes while it is in line it is answered
DeadlineExceededError and never run (one back in line after its batch failed is answered
DeadlineExceededError naming that failure). A caller that leaves (cancelled, disconnected) is
taken out of the line; if its batch is already running the result is dropped and its
batch-mates are not affected. A full line refuses at once with OverloadedError.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import functools
import itertools
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.errors import (
    DeadlineExceededError,
    GatewayError,
    InternalError,
    InvalidInputError,
    OverloadedError,
    UnavailableError,
)
from gateway.core.model import ModelPolicy, ModelSignature
from gateway.core.ports import ModelRunner
from gateway.core.statistics import VersionStatistics
from gateway.core.telemetry import BatchEvent, RequestTiming, RequestTrace, Telemetry
from gateway.core.workers import PoolShutDownError, WorkerPool

logger = logging.getLogger(__name__)

Arrays = list[npt.NDArray[Any]]


@dataclass(frozen=True, slots=True)
class BatcherConfig:
    """How one version batches; built from its config.pbtxt (Triton's names and semantics)."""

    max_batch_size: int
    """Rows one execution may hold; 0 for a model without a batch dimension."""
    merge: bool
    """Merge requests into one execution (dynamic_batching present and the model batches)."""
    concurrency: int
    """Batches that may run at once (instance_group count)."""
    max_queue_size: int
    """Requests that may wait in line (at each priority level); beyond it new ones are
    refused."""
    max_queue_bytes: int = 256 * 1024 * 1024
    """Input bytes that may wait in line; beyond it new ones are refused (bounds memory)."""
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    returning_wait_s: float = 0.0
    """How long, after a batch ends, the next may wait for its callers to come back (the
    gateway's `returning_wait_microseconds` parameter; 0: never). See DynamicBatcher."""
    solo_on_loop_s: float = 0.0
    """A solo request runs on the event loop when the version's last one-row run took less
    than this (--solo-on-loop-us; 0: never). See DynamicBatcher."""
    level_queue_sizes: Mapping[int, int] = field(default_factory=dict)
    """max_queue_size of the priority levels whose queue policy sets their own."""


@dataclass(eq=False, slots=True)
class _Request:
    feeds: Mapping[str, npt.NDArray[Any]]
    outputs: Sequence[str]
    rows: int
    nbytes: int
    key: tuple[Any, ...]
    result: asyncio.Future[Arrays]
    enqueued_s: float
    """On the loop's clock, for the queue delay."""
    enqueued_ns: int
    """On time.perf_counter_ns, for statistics."""
    timeout_s: float | None = None
    expiry: asyncio.TimerHandle | None = None
    timing: RequestTiming | None = None
    trace: RequestTrace | None = None
    solo: bool = False
    """No other request was in flight at its front end when it arrived (RequestContext.solo)."""
    failed: GatewayError | None = None
    """The error of a merged batch it was in: it is back in line to run apart from the
    requests that were not in its half (see DynamicBatcher)."""
    level: int = 0
    """Its priority level (1 first); 0 for a model without priority levels."""
    place: int = 0
    """Its place in the line's order: 2 * level, + 1 once delayed; -1 for a failed batch's
    halves. The line is sorted by it, arrivals last among equals."""
    delay: asyncio.TimerHandle | None = None
    """Moves it behind its level's undelayed requests when its policy timeout passes (DELAY)."""


@dataclass(slots=True)
class BatcherStats:
    """Counters since start: executions and the rows and requests they carried."""

    batches: int = 0
    rows: int = 0
    requests: int = 0
    expired: int = 0
    refused: int = 0
    on_loop: int = 0
    """Executions run on the event loop (solo requests; see DynamicBatcher)."""
    split: int = 0
    """Failed batches put back in line in halves, to find the requests that fail alone."""


def batcher_config(
    policy: ModelPolicy,
    signature: ModelSignature,
    concurrency: int,
    default_max_queue_size: int,
    max_queue_bytes: int,
    solo_on_loop_s: float = 0.0,
) -> BatcherConfig:
    """Triton's semantics: a config with dynamic_batching merges requests; a config without it
    runs them one by one. A model without config.pbtxt merges (with no delay) when it batches."""
    batching = policy.batching
    queue_size = batching.queue.max_queue_size if batching else 0
    level_sizes = {
        level: queue.max_queue_size or default_max_queue_size
        for level, queue in (batching.priority_queues.items() if batching else ())
    }
    return BatcherConfig(
        max_batch_size=signature.max_batch_size,
        merge=signature.batched and (batching is not None or not policy.configured),
        concurrency=concurrency,
        max_queue_size=queue_size or default_max_queue_size,
        max_queue_bytes=max_queue_bytes,
        solo_on_loop_s=solo_on_loop_s,
        max_queue_delay_s=batching.max_queue_delay_us / 1e6 if batching else 0.0,
        preferred_batch_sizes=batching.preferred_batch_sizes if batching else (),
        returning_wait_s=int(policy.parameters.get("returning_wait_microseconds", "0")) / 1e6,
        level_queue_sizes=level_sizes,
    )


def _compatibility_key(feeds: Mapping[str, npt.NDArray[Any]], merge: bool) -> tuple[Any, ...]:
    if not merge:
        return ()
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in feeds.items()))


def _place(request: _Request) -> int:
    return request.place


def _stop_timers(request: _Request) -> None:
    for timer in (request.expiry, request.delay):
        if timer is not None:
            timer.cancel()
    request.expiry = request.delay = None


def _gone(request: _Request, now_s: float) -> bool:
    """The request must not run: its caller left, or its deadline passed (loop time `now_s`)."""
    if request.result.done():
        return True
    return request.timeout_s is not None and now_s >= request.enqueued_s + request.timeout_s


def _held_bytes(array: npt.NDArray[Any]) -> int:
    """The memory a waiting input holds: a BYTES (object) array's nbytes counts only its
    pointers, so its elements' payloads are added, or string inputs would escape the line's
    byte bound (and the size guard of runs on the loop)."""
    if array.dtype.kind != "O":
        return array.nbytes
    return array.nbytes + sum(len(element) for element in array.flat)


class DynamicBatcher:
    """The line and the executions of one model version."""

    def __init__(
        self,
        name: str,
        runner: ModelRunner,
        workers: WorkerPool,
        config: BatcherConfig,
        output_order: Sequence[str],
        statistics: VersionStatistics | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        if config.concurrency < 1 or config.max_queue_size < 1:
            raise ValueError("concurrency and max_queue_size must be >= 1")
        self.name = name
        self.model, _, self.version = name.rpartition(":")
        self._telemetry = telemetry
        self.config = config
        self.stats = BatcherStats()
        self.statistics = statistics if statistics is not None else VersionStatistics()
        self._runner = runner
        self._workers = workers
        self._output_order = tuple(output_order)
        self._line: deque[_Request] = deque()
        """Sorted by _Request.place; see the module docstring."""
        self._line_bytes = 0
        self._at_level: dict[int, int] = {}
        """Requests waiting at each priority level (for its max_queue_size)."""
        self._running = 0
        self._timer: asyncio.Handle | None = None
        self._timer_due_s = 0.0
        self._idle = asyncio.Event()
        self._idle.set()
        self._dispatch_due = False
        """A dispatch is scheduled for the next loop turn: arrivals wait for it."""
        self._returning_rows = 0
        """Rows the next batch may wait for: those in line when the last batch ended plus
        that batch's (its callers coming back); 0 when not waiting for anyone."""
        self._returning_since_s = 0.0
        self._one_row_run_s = float("inf")
        """How long the last one-row execution took (unknown until one has run)."""
        self._one_row_run_nbytes = 0
        """Its input bytes: a larger request (dynamic non-batch dimensions) may run longer."""
        self._flushing = False
        """No company is coming (the version left service): batches launch without waiting."""
        self._halves = itertools.count()
        """Compatibility keys for the halves of failed batches: a half merges with no one else."""

    @property
    def waiting(self) -> int:
        return len(self._line)

    @property
    def running(self) -> int:
        return self._running

    def flush(self) -> None:
        """The version left service: what waits in line runs now, without waiting for company
        that will not come (its queue delay may be long), so its drain ends."""
        self._flushing = True
        self._dispatch()

    async def wait_idle(self) -> None:
        """Return once nothing waits or runs (for a version leaving service)."""
        await self._idle.wait()

    async def infer(
        self,
        feeds: Mapping[str, npt.NDArray[Any]],
        outputs: Sequence[str],
        rows: int,
        timeout_s: float | None,
        timing: RequestTiming | None = None,
        trace: RequestTrace | None = None,
        solo: bool = False,
        level: int = 0,
        delay_s: float | None = None,
    ) -> Arrays:
        """Run `feeds` (already validated) in some batch; return `outputs` for its rows only.
        `timing`, if given, is filled with the request's queue and compute time; `trace` is
        linked from the span of the batch that runs it. `level` is its priority level (0: the
        model has none); after `delay_s` in line (timeout_action DELAY) it moves behind the
        requests of its level whose timeouts have not passed."""
        if timeout_s is not None and timeout_s <= 0:
            self.stats.expired += 1
            raise DeadlineExceededError("the request's deadline passed before it could be queued")
        nbytes = sum(_held_bytes(array) for array in feeds.values())
        at_level = self._at_level.get(level, 0)
        if (
            at_level >= self.config.level_queue_sizes.get(level, self.config.max_queue_size)
            or self._line_bytes + nbytes > self.config.max_queue_bytes
        ) and self._line:
            self.stats.refused += 1
            at = f" ({at_level} at priority level {level})" if level else ""
            raise OverloadedError(
                f"model '{self.name}' is at capacity: {self._running} batch(es) running and "
                f"{len(self._line)} request(s){at} ({self._line_bytes} bytes) waiting; "
                "retry later"
            )
        loop = asyncio.get_running_loop()
        request = _Request(
            feeds=feeds,
            outputs=outputs,
            rows=max(rows, 1),
            nbytes=nbytes,
            key=_compatibility_key(feeds, self.config.merge),
            result=loop.create_future(),
            enqueued_s=loop.time(),
            enqueued_ns=time.perf_counter_ns(),
            timeout_s=timeout_s,
            timing=timing,
            trace=trace,
            solo=solo,
            level=level,
            place=2 * level,
        )
        if timeout_s is not None:
            request.expiry = loop.call_later(timeout_s, self._expire, request)
        if delay_s is not None and (timeout_s is None or delay_s < timeout_s):
            request.delay = loop.call_later(delay_s, self._delay, request)
        self._join(request)
        self._idle.clear()
        if not self._dispatch_due:
            self._dispatch()
        try:
            return await request.result
        except asyncio.CancelledError:
            self._leave(request)
            raise

    # -- the line ---------------------------------------------------------------------------
    def _join(self, request: _Request) -> None:
        """A new request takes its place in line."""
        self._insert(request)
        self._counted_in(request)

    def _insert(self, request: _Request) -> None:
        """Put the request in line at its place: behind those of its place or before it."""
        line = self._line
        if line and line[-1].place > request.place:
            line.insert(bisect.bisect_right(line, request.place, key=_place), request)
        else:
            line.append(request)

    def _counted_in(self, request: _Request) -> None:
        self._line_bytes += request.nbytes
        self._at_level[request.level] = self._at_level.get(request.level, 0) + 1

    def _counted_out(self, request: _Request) -> None:
        """The request left the line: its bytes and its level's count go, its timers stop."""
        self._line_bytes -= request.nbytes
        self._at_level[request.level] -= 1
        _stop_timers(request)

    def _take_out(self, request: _Request) -> bool:
        """Remove a waiting request from the line; False if it is not there (running, gone)."""
        try:
            self._line.remove(request)
        except ValueError:
            _stop_timers(request)
            return False
        self._counted_out(request)
        return True

    def _delay(self, request: _Request) -> None:
        """Its policy timeout passed (timeout_action DELAY): behind its level's others."""
        request.delay = None
        try:
            self._line.remove(request)
        except ValueError:
            return
        request.place += 1
        self._insert(request)
        self._dispatch()  # the head may have changed

    def _leave(self, request: _Request) -> None:
        """A caller that will never read its answer leaves the line."""
        if self._take_out(request):
            self._dispatch()

    def _expire(self, request: _Request) -> None:
        """The request's deadline passed while it waited: answer it, never run it."""
        if self._take_out(request):
            self._answer_expired(request)
            self._dispatch()

    def _answer_expired(self, request: _Request) -> None:
        if request.result.done():  # a caller that already left needs no answer
            return
        self.stats.expired += 1
        if request.failed is not None:
            message = (
                f"the batch this request ran in on model '{self.name}' failed "
                f"({request.failed.message}) and its deadline of {request.timeout_s:.3f} s "
                "passed before it could run apart from the requests that may have caused it"
            )
        else:
            message = (
                f"the request waited {request.timeout_s:.3f} s in line for model "
                f"'{self.name}' and its deadline passed; it was not run"
            )
        request.result.set_exception(DeadlineExceededError(message))

    # -- forming and launching batches ------------------------------------------------------
    def _dispatch(self) -> None:
        """Launch every batch the free slots allow; then note whether the batcher is idle.
        Never raises: a bug here answers the line with an error rather than strand it (a
        request left in line after its caller was told it failed, or a line no one
        dispatches again until the next arrival)."""
        try:
            self._dispatch_line()
        except Exception:
            logger.exception("model %s: dispatching its line failed", self.name)
            stranded = list(self._line)
            for request in stranded:
                self._take_out(request)
            self._fail(stranded, InternalError(f"model '{self.name}' failed; see the gateway log"))
            if not self._running:
                self._idle.set()

    def _dispatch_line(self) -> None:
        loop = asyncio.get_running_loop()
        while self._running < self.config.concurrency and self._line:
            batch, rows = self._collect()
            due_s = self._wait_until(batch, rows)
            if due_s is not None:
                self._arm_timer(due_s)
                return
            # Checked at launch only (not each time an arrival re-forms the batch): a caller
            # that left in this loop turn (its _leave not run yet) or a deadline that passed
            # while the loop lagged (its timer not run yet). Their rows are never run.
            now_s = loop.time()
            gone = [request for request in batch if _gone(request, now_s)]
            if gone:
                for request in gone:
                    self._take_out(request)
                    self._answer_expired(request)  # a caller that left needs no answer
                continue
            self._returning_rows = 0
            if len(batch) == 1:
                self._line.popleft()
            else:
                chosen = {id(request) for request in batch}
                self._line = deque(r for r in self._line if id(r) not in chosen)
            for request in batch:
                self._counted_out(request)
            try:
                self._launch(batch, rows)
            except Exception:  # e.g. MemoryError merging inputs: answer, never strand, the batch
                logger.exception("model %s could not launch a batch of %d rows", self.name, rows)
                self._fail(batch, InternalError(f"model '{self.name}' failed; see the gateway log"))
        if not self._line and not self._running:
            self._idle.set()

    def _collect(self) -> tuple[list[_Request], int]:
        """The head of the line and the later requests that fit with it, in line order."""
        head = self._line[0]
        batch, rows = [head], head.rows
        if not self.config.merge:
            return batch, rows
        limit = self.config.max_batch_size
        for request in itertools.islice(self._line, 1, None):
            if rows >= limit:
                break
            if request.key == head.key and rows + request.rows <= limit:
                batch.append(request)
                rows += request.rows
        return batch, rows

    def _wait_until(self, batch: list[_Request], rows: int) -> float | None:
        """When the batch of `rows` may launch at the latest (loop time), if it should wait for
        company; None to launch it now."""
        config = self.config
        if not config.merge or rows >= config.max_batch_size or self._flushing:
            return None
        if self._line[0].failed is not None:  # half of a failed batch: no one else may join
            return None
        if config.max_queue_delay_s > 0:  # Triton's queue delay, and then only it
            preferred = config.preferred_batch_sizes
            if preferred and (rows in preferred or rows >= max(preferred)):
                return None
            # From the oldest request in it, as Triton: with priority levels or DELAY the head
            # may be younger than requests behind it.
            due_s = min(request.enqueued_s for request in batch) + config.max_queue_delay_s
        elif rows < self._returning_rows:
            due_s = self._returning_since_s + config.returning_wait_s
        else:
            return None
        return due_s if asyncio.get_running_loop().time() < due_s else None

    def _arm_timer(self, due_s: float) -> None:
        if self._timer is not None:
            if self._timer_due_s <= due_s:
                return
            self._timer.cancel()
        # uvloop hands back a plain Handle (no when()) for a time already past: keep our own.
        self._timer_due_s = due_s
        self._timer = asyncio.get_running_loop().call_at(due_s, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._dispatch()

    def _launch(self, batch: list[_Request], rows: int) -> None:
        started_ns = time.perf_counter_ns()
        names = set().union(*(r.outputs for r in batch))
        outputs = [name for name in self._output_order if name in names]
        if len(batch) == 1:
            feeds = batch[0].feeds
        else:
            feeds = {
                name: np.concatenate([r.feeds[name] for r in batch]) for name in batch[0].feeds
            }
        input_ns = time.perf_counter_ns() - started_ns
        for request in batch:
            if request.failed is not None:  # its queue time was counted at its first launch
                continue
            queue_ns = started_ns - request.enqueued_ns
            self.statistics.queue.add(queue_ns)
            if request.timing is not None:
                request.timing.queue_ns = queue_ns
                request.timing.launched_ns = started_ns

        loop = asyncio.get_running_loop()
        finish = functools.partial(self._finish, batch, rows, outputs, started_ns, input_ns)
        if self._runs_on_loop(batch, rows):
            self._count_launch(batch, rows)
            self.stats.on_loop += 1
            ran, raised = None, None
            try:
                ran = self._timed_run(feeds, outputs)
            except BaseException as failure:  # as the worker would hand it to _finish
                raised = failure
            finish(ran, raised)
            if raised is not None and not isinstance(raised, Exception):
                raise raised  # KeyboardInterrupt, SystemExit: the batch is answered; stop
            return
        # The slot is given back when the run ends (_finish), not when a caller leaves: a
        # cancelled caller must not let another batch start while this one still holds a core.
        try:
            self._workers.submit(functools.partial(self._timed_run, feeds, outputs), loop, finish)
        except PoolShutDownError:  # the server is stopping
            self._fail(batch, UnavailableError("the server is shutting down"))
            return
        self._count_launch(batch, rows)

    def _runs_on_loop(self, batch: list[_Request], rows: int) -> bool:
        """A solo request, one row, nothing else in line or running, on a model whose last
        one-row run was short: run it here rather than hand it to an inference thread and back."""
        return (
            rows == 1
            and len(batch) == 1
            and batch[0].solo
            and not self._running
            and not self._line
            and self._one_row_run_s < self.config.solo_on_loop_s
            and batch[0].nbytes <= self._one_row_run_nbytes  # no larger than the one timed
        )

    def _count_launch(self, batch: list[_Request], rows: int) -> None:
        self._running += 1
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.requests += len(batch)

    def _timed_run(
        self, feeds: Mapping[str, npt.NDArray[Any]], outputs: list[str]
    ) -> tuple[Arrays, int]:
        started_ns = time.perf_counter_ns()
        arrays = self._runner.run(feeds, outputs)
        return arrays, time.perf_counter_ns() - started_ns

    def _finish(
        self,
        batch: list[_Request],
        rows: int,
        outputs: list[str],
        started_ns: int,
        input_ns: int,
        ran: tuple[Arrays, int] | None,
        raised: BaseException | None,
    ) -> None:
        self._running -= 1
        if self.config.returning_wait_s > 0 and self.config.concurrency == 1:
            # The next batch may wait for this one's callers to come back (module docstring).
            waiting = sum(request.rows for request in self._line)
            self._returning_rows = min(self.config.max_batch_size, waiting + rows)
            self._returning_since_s = asyncio.get_running_loop().time()
        # The next batch forms a loop turn later, before this one's answers are sent: the
        # requests already read and on their way to the line join it (module docstring).
        fills = len(self._line) >= self.config.max_batch_size
        if self._line and not fills and self.config.merge and not self._dispatch_due:
            self._dispatch_due = True
            asyncio.get_running_loop().call_soon(self._due_dispatch)
        error = ""
        try:
            if raised is not None:
                raise raised
            assert ran is not None
            arrays, infer_ns = ran
            if rows == 1:
                self._one_row_run_s = infer_ns / 1e9
                self._one_row_run_nbytes = batch[0].nbytes
            split_started_ns = time.perf_counter_ns()
            parts = self._split(batch, rows, outputs, arrays)
            output_ns = time.perf_counter_ns() - split_started_ns
            self.statistics.record_batch(rows, len(batch), input_ns, infer_ns, output_ns)
        except GatewayError as failure:
            error = failure.message
            if raised is None or not self._split_failed(batch, failure):
                self._fail(batch, failure)
        except PoolShutDownError:  # the pool was shut down before this batch started
            error = "the server is shutting down"
            self._fail(batch, UnavailableError(error))
        except BaseException:  # the runner maps its errors; anything else is a bug (even a
            # SystemExit raised on the inference thread: it must not stop the event loop)
            logger.exception("model %s failed on a batch of %d rows", self.name, rows)
            error = f"model '{self.name}' failed; see the gateway log"
            self._fail(batch, InternalError(error))
        else:
            for request, part in zip(batch, parts, strict=True):
                if not request.result.done():
                    request.result.set_result(part)
        ended_ns = time.perf_counter_ns()
        for request in batch:
            if request.timing is not None:  # from its first launch: a rerun half counts both
                request.timing.compute_ns = ended_ns - request.timing.launched_ns
                request.timing.batch_rows = rows
        if self._telemetry is not None:
            traces = [r.trace for r in batch if r.trace is not None]
            event = BatchEvent(
                self.model, self.version, rows, len(batch), started_ns, ended_ns, traces, error
            )
            self._telemetry.batch_finished(event)
        if not self._dispatch_due:
            self._dispatch()

    def _split_failed(self, batch: list[_Request], failure: GatewayError) -> bool:
        """Put a failed run's requests back at the head of the line in two halves that run
        apart (module docstring); False if it ran one request, or none still waits for it,
        or its error is not one a caller's values cause (InvalidInputError)."""
        waiting = [request for request in batch if not request.result.done()]
        if len(batch) < 2 or not waiting or not isinstance(failure, InvalidInputError):
            return False
        self.stats.split += 1
        loop = asyncio.get_running_loop()
        now_s = loop.time()
        middle = len(waiting) // 2  # one caller left (the others went): it runs alone
        halves = (waiting[middle:], waiting[:middle]) if middle else (waiting,)
        for half in halves:  # the first half ends up at the head
            key = ("half", next(self._halves))
            for request in reversed(half):
                request.failed = failure
                request.key = key
                request.place = -1  # ahead of every level: it was chosen to run already
                if _gone(request, now_s):
                    self._answer_expired(request)
                    continue
                if request.timeout_s is not None:  # its deadline, from when it first queued
                    due_s = request.enqueued_s + request.timeout_s
                    request.expiry = loop.call_at(due_s, self._expire, request)
                self._line.appendleft(request)
                self._counted_in(request)
        return True

    def _due_dispatch(self) -> None:
        self._dispatch_due = False
        self._dispatch()

    def _split(
        self, batch: list[_Request], rows: int, outputs: list[str], arrays: Arrays
    ) -> list[Arrays]:
        if len(arrays) != len(outputs):
            raise InternalError(
                f"model '{self.name}' returned {len(arrays)} outputs for {len(outputs)} requested"
            )
        by_name = dict(zip(outputs, arrays, strict=True))
        if self.config.max_batch_size > 0:  # every output has the batch's rows, merged or not
            for name, array in by_name.items():
                if array.ndim == 0 or array.shape[0] != rows:
                    raise InternalError(
                        f"model '{self.name}' returned output '{name}' with shape "
                        f"{list(array.shape)} for a batch of {rows} rows"
                    )
        if len(batch) == 1:
            return [[by_name[name] for name in batch[0].outputs]]
        parts: list[Arrays] = []
        offset = 0
        for request in batch:
            end = offset + request.rows
            parts.append([by_name[name][offset:end] for name in request.outputs])
            offset = end
        return parts

    @staticmethod
    def _fail(batch: list[_Request], error: GatewayError) -> None:
        for request in batch:
            if not request.result.done():
                request.result.set_exception(copy.copy(error))
