"""The gateway names its threads at the OS level, and the bench sorts a server's CPU by them."""

from __future__ import annotations

import threading
from pathlib import Path

from gateway.core.workers import name_os_thread
from loadtest.benchkit.measure import thread_role


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
