"""The CPU scheduling policy at start-up (gateway/app/scheduling.py), in a process of its own:
the policy belongs to threads, and the test run's own must stay as they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir()
    or os.sched_getscheduler(0) not in {os.SCHED_OTHER, os.SCHED_BATCH},
    reason="Linux threads, started under the default policy or SCHED_BATCH",
)

PROGRAM = textwrap.dedent(
    """
    import json, os, sys, threading
    from gateway.app.scheduling import set_scheduling_policy

    if sys.argv[2:] == ["started-under-batch"]:  # as `chrt --batch 0` would start it
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))

    def parked(ready, release, policy=None):
        if policy is not None:
            os.sched_setscheduler(0, policy, os.sched_param(0))
        ready.append(threading.get_native_id())
        release.wait()

    release = threading.Event()
    ids = {}

    def start(name, policy=None):
        ready = []
        threading.Thread(target=parked, args=(ready, release, policy), daemon=True).start()
        while not ready:
            pass
        ids[name] = ready[0]

    start("before")
    start("idle before", os.SCHED_IDLE)
    done = set_scheduling_policy(sys.argv[1])
    start("after")
    ids["main"] = threading.get_native_id()
    print(json.dumps({"done": done, **{k: os.sched_getscheduler(v) for k, v in ids.items()}}))
    release.set()
    """
)


def policies_after(policy: str, *options: str) -> dict[str, int]:
    run = subprocess.run(
        [sys.executable, "-c", PROGRAM, policy, *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, int] = json.loads(run.stdout)
    if not result["done"]:  # a sandbox that refuses or lacks the call (the gateway logs it)
        pytest.skip("this platform refuses SCHED_BATCH")
    return result


def test_batch_applies_to_the_threads_alive_and_those_started_later() -> None:
    got = policies_after("batch")
    assert got == {
        "done": True,
        "before": os.SCHED_BATCH,
        "after": os.SCHED_BATCH,  # inherited from its creator
        "main": os.SCHED_BATCH,
        "idle before": os.SCHED_IDLE,  # a thread that chose its own policy keeps it
    }


def test_normal_puts_a_process_started_under_batch_back_on_the_default_policy() -> None:
    got = policies_after("normal", "started-under-batch")
    assert got["done"] is True
    assert {got["before"], got["after"], got["main"]} == {os.SCHED_OTHER}
    assert got["idle before"] == os.SCHED_IDLE
