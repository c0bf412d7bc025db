"""The gateway names its threads at the OS level, and the bench sorts a server's CPU by them."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from gateway.core.workers import name_os_thread
from loadtest.benchkit.measure import ThreadCpu, cpu_by_thread, switches_between, thread_role


def test_thread_roles_come_from_the_names_the_gateway_gives() -> None:
    assert thread_role(100, 100, "python") == "loop"  # the main thread, whatever its name
    assert thread_role(100, 101, "inference_0") == "inference"
    assert thread_role(100, 102, "grpc_117") == "grpc"
    assert thread_role(100, 103, "event_engine") == "event_engine"
    assert thread_role(100, 104, "python") == "other"  # grpcio's poller, say
    assert thread_role(100, 105, "grpc_global_tim") == "other"  # C-core's timer, cut at 15


def comm(thread: threading.Thread) -> str:
    return Path(f"/proc/self/task/{thread.native_id}/comm").read_text().strip()


def test_a_thread_takes_its_python_name_at_the_os_level() -> None:
    named: list[str] = []

    def run() -> None:
        name_os_thread()
        named.append(comm(threading.current_thread()))

    thread = threading.Thread(target=run, name="inference_a_long_name_7")
    thread.start()
    thread.join()
    assert named == ["inference_a_lon"]  # Linux keeps 15 characters


def test_context_switches_count_each_live_thread_from_the_first_sample() -> None:
    before = {
        1: ThreadCpu("loop", 1.0, voluntary_switches=100, involuntary_switches=10),
        2: ThreadCpu("grpc", 0.5, voluntary_switches=50, involuntary_switches=5),  # ends
    }
    after = {
        1: ThreadCpu("loop", 2.0, voluntary_switches=130, involuntary_switches=12),
        3: ThreadCpu("grpc", 0.1, voluntary_switches=7, involuntary_switches=1),  # new
    }
    assert switches_between(before, after) == {"voluntary": 37, "involuntary": 3}
    assert switches_between(before, {}) == {}  # nothing sampled: no figures, not zeros


def test_a_live_process_reports_its_threads_switches() -> None:
    """Read from /proc: this test process has blocked at least once by now."""
    threads = cpu_by_thread(os.getpid())
    assert sum(t.voluntary_switches + t.involuntary_switches for t in threads.values()) > 0
