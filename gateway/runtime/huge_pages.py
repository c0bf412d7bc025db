"""Moves the process's memory into transparent huge pages after a model loads (MADV_COLLAPSE).

A model of tens of megabytes read once per small batch takes one TLB miss per 4 KiB page it
touches; in 2 MiB pages it takes one per 512 of them. `mlp_wide` (80 MB of weights) ran batch-1
requests in x0.84-0.88 the time this way on this host, and the gateway answered a lone caller in
about x0.92 the time ("Weights in huge pages" in loadtest/FINDINGS.md); large batches and models
that fit in the caches gain little. onnxruntime has no option for it, and glibc's own
(GLIBC_TUNABLES=glibc.malloc.hugetlb=1) must be set before the process starts.

After a CPU model version loads and warms up, every huge-page-sized chunk of the process's
private anonymous writable memory whose every page is present and this process's alone is
collapsed: the new version's weights and arenas, and any memory a later load reuses after an
earlier one freed it (glibc gives freed pages back without changing the mapping, so what a load
allocated cannot be told from the mappings that changed). Chunks already in a huge page cost
the kernel a look, not a copy. A chunk with a page never written (the kernel's shared zero
page), never touched, or shared with another process is left alone, so the memory in use does
not grow (unless another thread frees a page of a chunk between the check and the collapse,
which the kernel then fills). A mapping kept out of huge pages (MADV_NOHUGEPAGE) and pages a
device has pinned are left as they are by the kernel.

MADV_COLLAPSE needs Linux 6.1 or later. The gateway also honours an administrator's `never` in
/sys/kernel/mm/transparent_hugepage/enabled and a process started with THP disabled (prctl);
in any of these cases nothing happens and the first load says why in the log.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
import mmap
import platform
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

logger = logging.getLogger(__name__)

MADV_COLLAPSE = 25
"""From linux/mman.h (Linux 6.1); Python's mmap module does not name it."""
_ENABLED_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
_PMD_SIZE_FILE = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"
_DEFAULT_HUGE_PAGE_BYTES = 2 * 1024 * 1024
_PRESENT_AND_EXCLUSIVE = np.uint64((1 << 63) | (1 << 56))
"""/proc/self/pagemap: bit 63, the page is in memory; bit 56, mapped by this process alone
(the shared zero page, which a read of untouched memory maps, is not)."""

_WINDOW_CHUNKS = 512
"""Chunks whose pagemap entries are read at once: 1 GiB of address space, 2 MiB of entries."""

_one_at_a_time = threading.Lock()
"""Loads finishing together collapse in turn: the second finds the first's work done."""


@dataclass(frozen=True, slots=True)
class CollapseResult:
    moved_bytes: int
    """How much more of the process is in huge pages than before the pass."""
    huge_bytes: int
    """How much of the process is in huge pages after it."""
    unsupported: str | None = None
    """Why nothing could be collapsed on this system, if so."""


def move_to_huge_pages(label: str) -> CollapseResult:
    """Collapse what can be, and log what moved under `label` (a model version)."""
    started = time.perf_counter()
    result = collapse_resident_memory()
    if result.unsupported is None:
        logger.info(
            "%s: %.1f MiB moved to huge pages in %.2f s (%.1f MiB of the process now in them)",
            label,
            result.moved_bytes / 2**20,
            time.perf_counter() - started,
            result.huge_bytes / 2**20,
        )
    return result


def collapse_resident_memory() -> CollapseResult:
    """Collapse every huge-page-sized chunk of the process's private anonymous writable memory
    whose pages are all present and its own (blocking: a copy of each chunk not yet in a huge
    page)."""
    with _one_at_a_time:
        reason = unsupported_reason()
        if reason is not None:
            return CollapseResult(0, 0, reason)
        before = _anon_huge_bytes()
        page = mmap.PAGESIZE
        huge = _huge_page_bytes()
        try:
            with open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
                for start, end in anonymous_mappings().items():
                    for run_start, run_end in _owned_runs(pagemap, start, end, page, huge):
                        # An error means some chunk stayed as it was (a page pinned or locked,
                        # no free huge page, a cgroup limit, a mapping kept out of huge pages);
                        # the kernel has still collapsed the others of the run.
                        _libc().madvise(run_start, run_end - run_start, MADV_COLLAPSE)
        except OSError as exc:  # no pagemap (a restricted /proc): nothing to go by
            logger.debug("cannot read /proc/self/pagemap: %s", exc)
        after = _anon_huge_bytes()
        return CollapseResult(max(0, after - before), after)


def anonymous_mappings() -> dict[int, int]:
    """Start -> end address of the process's private anonymous writable mappings (the heap
    included); empty where /proc is not there."""
    mappings: dict[int, int] = {}
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            for line in maps:
                fields = line.split()
                anonymous = len(fields) == 5 or (len(fields) == 6 and fields[5] == "[heap]")
                if anonymous and fields[1].startswith("rw") and fields[1][3] == "p":
                    start, _, end = fields[0].partition("-")
                    mappings[int(start, 16)] = int(end, 16)
    except OSError:
        return {}
    return mappings


def _owned_runs(
    pagemap: BinaryIO, start: int, end: int, page: int, huge: int
) -> Iterator[tuple[int, int]]:
    """The runs of consecutive huge-page-aligned chunks of [start, end) whose every page is
    present and this process's alone, read a window of chunks at a time (a mapping may be
    gigabytes)."""
    first = -(-start // huge) * huge
    last = end // huge * huge
    per_chunk = huge // page
    for window in range(first, last, _WINDOW_CHUNKS * huge):
        chunks = min(_WINDOW_CHUNKS, (last - window) // huge)
        try:
            pagemap.seek(window // page * 8)
            entries = pagemap.read(chunks * per_chunk * 8)
        except OSError:  # unmapped meanwhile
            return
        if len(entries) != chunks * per_chunk * 8:
            return
        flags = np.frombuffer(entries, dtype=np.uint64).reshape(chunks, per_chunk)
        owned = ((flags & _PRESENT_AND_EXCLUSIVE) == _PRESENT_AND_EXCLUSIVE).all(axis=1)
        index = 0
        for whole, group in itertools.groupby(owned.tolist()):
            count = len(list(group))
            if whole:
                yield window + index * huge, window + (index + count) * huge
            index += count


@functools.cache
def unsupported_reason() -> str | None:
    """Why memory is not collapsed on this system, or None (logged once)."""
    reason = _why_unsupported()
    if reason is not None:
        logger.info("model weights stay in 4 KiB pages: %s", reason)
    return reason


def _why_unsupported() -> str | None:
    if not sys.platform.startswith("linux"):
        return "huge pages are collapsed on Linux only"
    release = platform.release()
    version = re.match(r"(\d+)\.(\d+)", release)
    if version and (int(version[1]), int(version[2])) < (6, 1):
        return f"Linux {release} has no MADV_COLLAPSE (6.1 or later has)"
    try:
        with open(_ENABLED_FILE, encoding="ascii") as file:
            enabled = file.read()
    except OSError:
        return "this kernel has no transparent huge pages"
    if "[never]" in enabled:
        return f"transparent huge pages are off ({_ENABLED_FILE} says never)"
    if _proc_field("/proc/self/status", "THP_enabled") == "0":
        return "transparent huge pages are disabled for this process (prctl PR_SET_THP_DISABLE)"
    return None


def _proc_field(path: str, field: str) -> str | None:
    """The value of `field` in a /proc file of `Name: value` lines, or None."""
    try:
        with open(path, encoding="ascii", errors="replace") as lines:
            for line in lines:
                name, _, value = line.partition(":")
                if name == field:
                    return value.strip()
    except OSError:
        pass
    return None


def _anon_huge_bytes() -> int:
    """The process's anonymous memory in huge pages."""
    value = _proc_field("/proc/self/smaps_rollup", "AnonHugePages")  # "2048 kB"
    return int(value.split()[0]) * 1024 if value else 0


@functools.cache
def _huge_page_bytes() -> int:
    try:
        with open(_PMD_SIZE_FILE, encoding="ascii") as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return _DEFAULT_HUGE_PAGE_BYTES


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc
