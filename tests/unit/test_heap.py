"""The garbage collector's policy at start-up (gateway/app/heap.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app.heap import HUGE_PAGES_TUNABLE, malloc_huge_pages, tune_garbage_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_objects_alive_at_start_up_are_frozen_and_the_young_threshold_is_raised() -> None:
    gc.unfreeze()
    alive = [object()]  # something a module would create, alive for good
    _, middle, old = gc.get_threshold()
    tune_garbage_collector(10_000)
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (10_000, middle, old)
    assert alive


@pytest.mark.usefixtures("restored_collector")
def test_cycles_made_after_the_freeze_are_still_collected() -> None:
    """What is created later (model versions, requests) stays collectable."""
    tune_garbage_collector(10_000)

    class Node:
        other: Node

    first, second = Node(), Node()
    first.other, second.other = second, first
    del first, second
    assert gc.isenabled()
    assert gc.collect() >= 2


@pytest.mark.usefixtures("restored_collector")
def test_zero_keeps_pythons_threshold() -> None:
    before = gc.get_threshold()
    tune_garbage_collector(0)
    assert gc.get_threshold() == before


def thp_mode(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "enabled"
    path.write_text(line + "\n")
    return path


@pytest.mark.parametrize(
    ("tunables", "mode", "glibc", "said"),
    [
        (HUGE_PAGES_TUNABLE, "always [madvise] never", (2, 36), "on (glibc.malloc.hugetlb=1)"),
        (
            "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1",
            "always [madvise] never",
            (2, 36),
            "on (glibc.malloc.hugetlb=1)",
        ),
        ("", "always [madvise] never", (2, 36), "off (start the gateway with GLIBC_TUNABLES="),
        ("glibc.malloc.hugetlb=0", "always [madvise] never", (2, 36), "off (start the"),
        ("", "[always] madvise never", None, "on (the kernel's transparent huge pages are 'al"),
        (HUGE_PAGES_TUNABLE, "always madvise [never]", (2, 36), "off (the kernel's transpare"),
        (HUGE_PAGES_TUNABLE, "always [madvise] never", (2, 31), "off (the C library is glibc 2.31"),
        (HUGE_PAGES_TUNABLE, "always [madvise] never", None, "off (the C library is not glibc"),
    ],
)
def test_the_start_up_log_says_whether_malloc_gets_huge_pages_and_why_not(
    tmp_path: Path, tunables: str, mode: str, glibc: tuple[int, int] | None, said: str
) -> None:
    state = malloc_huge_pages({"GLIBC_TUNABLES": tunables}, thp_mode(tmp_path, mode), glibc)
    assert state.startswith(said), state


def test_without_transparent_huge_pages_in_the_kernel_they_are_off(tmp_path: Path) -> None:
    state = malloc_huge_pages({"GLIBC_TUNABLES": HUGE_PAGES_TUNABLE}, tmp_path / "missing")
    assert state == "off (the kernel offers no transparent huge pages)"


def test_the_dockerfile_make_serve_and_the_benchmarks_ask_for_the_same_tunable() -> None:
    """What ships, what `make serve` runs and what the benchmarks measure are the same process."""
    root = Path(__file__).resolve().parents[2]
    assert f"GLIBC_TUNABLES={HUGE_PAGES_TUNABLE}" in (root / "Dockerfile").read_text()
    makefile = (root / "Makefile").read_text()
    assert f"MALLOC_TUNABLES ?= {HUGE_PAGES_TUNABLE}\n" in makefile
    assert "GLIBC_TUNABLES=$(MALLOC_TUNABLES) $(BIN)/gateway serve" in makefile
    bench = (root / "loadtest" / "benchkit" / "processes.py").read_text()
    assert f'MALLOC_TUNABLES = "{HUGE_PAGES_TUNABLE}"' in bench
