"""The kernel's CPU scheduling policy for a serving process.

A request crosses several threads of this process: grpcio's poller hands a call to a worker,
the worker hands it to the event loop, the loop hands a batch to an inference thread, and the
answer goes back the same way. Under Linux's default policy (SCHED_OTHER) each of those wake-ups
may preempt the thread that made it, in the middle of what it was doing: measured on the `mlp`
model over gRPC at concurrency 1 with every thread on one core, about 9 of the 24 context
switches of a call were such preemptions, and the preempted thread came back to caches the other
one had filled.

SCHED_BATCH is the same fair scheduler, with the same share of the CPU for every thread and the
same niceness, minus wake-up preemption: a thread that wakes another runs on until it blocks or
its time slice ends. For a pipeline of threads that hand work to each other that is the order it
wants anyway. Measured on that call with two gateways alternating 1.5 s windows (the same
machine, the same minutes): 10 context switches a call instead of 24, server CPU x0.91, p50
x0.94-0.95; at 16 and 64 calls in flight x1.10-1.12 requests/s, with bigger batches, because
the thread still bringing requests in is no longer cut short by the one it woke. HTTP, whose
requests stay on the event loop, and the model-bound `mlp_wide` did not move (see
loadtest/FINDINGS.md, "SCHED_BATCH for every thread").

Linux keeps the policy per thread, and a thread starts with its creator's: so it is set on every
thread alive at start-up, before the servers start theirs. Threads that choose their own policy
afterwards keep what they chose (the shadow pool's SCHED_IDLE, the load pool's niceness).
Switching between SCHED_OTHER and SCHED_BATCH needs no privilege.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

POLICIES = {"normal": "SCHED_OTHER", "batch": "SCHED_BATCH"}


def set_scheduling_policy(policy: str) -> bool:
    """Put every thread of this process that runs under SCHED_OTHER or SCHED_BATCH on `policy`
    ('normal' or 'batch'; see POLICIES); threads on SCHED_IDLE or a real-time policy keep it.
    False, with a warning logged, where the platform has no such policy or refuses it; the
    threads switched until then keep the new policy, the others theirs."""
    name = POLICIES[policy]
    if not hasattr(os, "SCHED_BATCH") or not hasattr(os, "sched_setscheduler"):
        logger.warning("scheduling policy %s: not available on this platform", name)
        return False
    number = getattr(os, name)
    switchable = {os.SCHED_OTHER, os.SCHED_BATCH}  # not SCHED_IDLE, not real-time ones
    flags = getattr(os, "SCHED_RESET_ON_FORK", 0)  # or'ed into what sched_getscheduler says
    done: set[int] = set()
    try:
        # Again until no thread is new: one not yet switched may have started another.
        while pending := set(_thread_ids()) - done:
            for thread_id in pending:
                done.add(thread_id)
                try:
                    if (os.sched_getscheduler(thread_id) & ~flags) in switchable:
                        os.sched_setscheduler(thread_id, number, os.sched_param(0))
                except ProcessLookupError:  # the thread ended meanwhile
                    continue
    except OSError as exc:
        logger.warning("scheduling policy %s: %s", name, exc)
        return False
    return True


def _thread_ids() -> list[int]:
    """This process's threads (Linux); elsewhere the calling thread (0)."""
    try:
        return [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return [0]
