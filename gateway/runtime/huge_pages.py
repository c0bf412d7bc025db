"""Moves the process's memory into transparent huge pages after a model loads (MADV_COLLAPSE).

A model of tens of megabytes read once per small batch takes one TLB miss per 4 KiB page it
touches; in 2 MiB pages it takes one per 512 of them. `mlp_wide` (80 MB of weights) ran batch-1
requests in x0.84-0.88 the time this way on this host, and the gateway answered a lone caller
in x0.92 the time (loadtest/FINDINGS.md); large batches and models that fit in the caches gain
little. onnxruntime has no option for it, and glibc's own (GLIBC_TUNABLES=glibc.malloc.hugetlb=1)
must be set before the process starts.

After a CPU model version loads, every huge-page-sized chunk of the process's private anonymous
writable memory whose every page is resident is collapsed: the new version's weights, and any
memory a later load reuses after an earlier one freed it (glibc gives freed pages back without
changing the mapping, so a load cannot be told from the mappings that changed). Chunks already
in a huge page cost the kernel a look, not a copy. Sparse chunks (thread stacks, freed arenas)
stay as they are, so no memory is added. Pages pinned by a device are left alone by the kernel.
A mapping kept out of huge pages (MADV_NOHUGEPAGE) is skipped. MADV_COLLAPSE needs Linux 6.1 or
later and transparent huge pages not set to `never`; where either is missing nothing happens,
and the first load says so in the log. Other threads may map and unmap memory meanwhile: a chunk
gone by the time it is collapsed is skipped, and collapsing memory changes only its page size,
never its contents.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import mmap
import platform
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

logger = logging.getLogger(__name__)

MADV_COLLAPSE = 25
"""From linux/mman.h (Linux 6.1); Python's mmap module does not name it."""
_ENABLED_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
_PMD_SIZE_FILE = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"
_DEFAULT_HUGE_PAGE_BYTES = 2 * 1024 * 1024

_one_at_a_time = threading.Lock()
"""Loads finishing together collapse in turn: the second finds the first's work done."""


@dataclass(frozen=True, slots=True)
class CollapseResult:
    collapsed_bytes: int
    """Bytes in huge pages now (those that already were included)."""
    skipped_bytes: int
    """Bytes of fully resident chunks the kernel did not collapse (no free huge page, or
    unmapped meanwhile)."""
    unsupported: str | None = None
    """Why nothing could be collapsed on this system, if so."""


def anonymous_mappings() -> dict[int, int]:
    """The private anonymous writable mappings of this process (the heap included); empty
    where /proc is not there."""
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


def collapse_resident_memory() -> CollapseResult:
    """Collapse every fully resident huge-page-sized chunk of the process's private anonymous
    writable memory (blocking: a copy of each chunk not yet in a huge page)."""
    with _one_at_a_time:
        reason = unsupported_reason()
        if reason is not None:
            return CollapseResult(0, 0, reason)
        page = mmap.PAGESIZE
        huge = _huge_page_bytes()
        collapsed = skipped = 0
        for start, end in anonymous_mappings().items():
            for run_start, run_end in _resident_runs(start, end, page, huge):
                error = _madvise_collapse(run_start, run_end - run_start)
                if error == 0:
                    collapsed += run_end - run_start
                elif error == errno.EINVAL:  # a mapping kept out of huge pages (MADV_NOHUGEPAGE)
                    break
                else:  # EAGAIN: no free huge page; ENOMEM: unmapped meanwhile
                    skipped += run_end - run_start
        return CollapseResult(collapsed, skipped)


@functools.cache
def unsupported_reason() -> str | None:
    """Why this system cannot collapse memory into huge pages, or None (logged once)."""
    reason = _why_unsupported()
    if reason is not None:
        logger.info("model weights stay in 4 KiB pages: %s", reason)
    return reason


def _why_unsupported() -> str | None:
    if not sys.platform.startswith("linux"):
        return "huge pages are collapsed on Linux only"
    try:
        with open(_ENABLED_FILE, encoding="ascii") as file:
            enabled = file.read()
    except OSError:
        return "this kernel has no transparent huge pages"
    if "[never]" in enabled:
        return f"transparent huge pages are off ({_ENABLED_FILE} is 'never')"
    release = platform.release()
    version = re.match(r"(\d+)\.(\d+)", release)
    if version and (int(version[1]), int(version[2])) < (6, 1):
        return f"Linux {release} has no MADV_COLLAPSE (6.1 or later has)"
    return None


def _resident_runs(start: int, end: int, page: int, huge: int) -> Iterator[tuple[int, int]]:
    """The runs of consecutive huge-page-aligned chunks of [start, end) whose every page is
    resident."""
    first = -(-start // huge) * huge
    last = end // huge * huge
    if last - first < huge:
        return
    residency = _residency(first, last - first, page)
    if residency is None:
        return
    per_chunk = huge // page
    run_start: int | None = None
    for index in range((last - first) // huge):
        chunk = residency[index * per_chunk : (index + 1) * per_chunk]
        address = first + index * huge
        if chunk.count(0) == 0:
            if run_start is None:
                run_start = address
        elif run_start is not None:
            yield run_start, address
            run_start = None
    if run_start is not None:
        yield run_start, last


def _residency(address: int, length: int, page: int) -> bytes | None:
    """One byte a page, non-zero where the page is resident (mincore); None if unmapped."""
    vector = (ctypes.c_ubyte * (length // page))()
    if _libc().mincore(ctypes.c_void_p(address), ctypes.c_size_t(length), vector) != 0:
        return None
    return bytes(vector)


def _madvise_collapse(address: int, length: int) -> int:
    """0, or the errno of madvise(MADV_COLLAPSE)."""
    libc = _libc()
    if libc.madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), MADV_COLLAPSE) == 0:
        return 0
    return ctypes.get_errno()


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
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    libc.mincore.restype = ctypes.c_int
    return libc
