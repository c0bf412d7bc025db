"""Moving the process's memory into huge pages after a load (gateway/runtime/huge_pages.py)."""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.runtime.huge_pages import (
    anonymous_mappings,
    collapse_resident_memory,
    unsupported_reason,
)

SIZE = 12 * 1024 * 1024
CHUNK = 2 * 1024 * 1024
PAGE = mmap.PAGESIZE
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.fixture(scope="module", autouse=True)
def collapsing_is_what_gives_huge_pages() -> None:
    """Under `always` the kernel gives huge pages at the first write, so a collapse cannot be
    told apart; where collapsing is unsupported there is nothing to test."""
    reason = unsupported_reason()
    if reason is not None:
        pytest.skip(f"memory cannot be collapsed here: {reason}")
    if "[madvise]" not in THP_SETTING.read_text():
        pytest.skip(f"{THP_SETTING} is not 'madvise'")


def _private_mapping(advice: int = mmap.MADV_DONTDUMP) -> Iterator[tuple[mmap.mmap, int]]:
    region = mmap.mmap(-1, SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    # A flag of its own keeps the kernel from merging it with its neighbours, so smaps
    # reports it alone.
    region.madvise(advice)
    anchor = ctypes.c_char.from_buffer(region)
    address = ctypes.addressof(anchor)
    del anchor  # no buffer stays exported: the mapping can be closed whatever the test did
    yield region, address
    region.close()


@pytest.fixture
def dense() -> Iterator[tuple[mmap.mmap, int]]:
    yield from _private_mapping()


@pytest.fixture
def partly_written() -> Iterator[tuple[mmap.mmap, int]]:
    yield from _private_mapping()


@pytest.fixture
def refused() -> Iterator[tuple[mmap.mmap, int]]:
    """Memory its owner keeps out of huge pages."""
    yield from _private_mapping(mmap.MADV_NOHUGEPAGE)


def _smaps_kb(address: int, field: str) -> int:
    """The field (kB) of the mapping that starts at `address`."""
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as smaps:
        current = None
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                current = int(head.split("-")[0], 16)
            elif current == address and head == f"{field}:":
                return int(line.split()[1])
    raise AssertionError(f"no mapping at {address:#x}")


def _pattern() -> bytes:
    return bytes((i * 7 + 0x5A) % 251 for i in range(PAGE)) * (SIZE // PAGE)


def test_dense_memory_moves_to_huge_pages_and_keeps_its_contents(
    dense: tuple[mmap.mmap, int],
) -> None:
    region, address = dense
    region[:] = _pattern()
    assert _smaps_kb(address, "AnonHugePages") == 0
    assert anonymous_mappings()[address] == address + SIZE

    result = collapse_resident_memory()

    # Every 2 MiB-aligned chunk inside 12 MiB: at least five.
    assert _smaps_kb(address, "AnonHugePages") >= 5 * CHUNK // 1024
    assert result.unsupported is None and result.moved_bytes >= 5 * CHUNK
    assert result.huge_bytes >= result.moved_bytes
    assert region[:] == _pattern()


def test_chunks_with_pages_never_written_are_left_alone_so_no_memory_is_added(
    partly_written: tuple[mmap.mmap, int],
) -> None:
    """A page only read maps the kernel's shared zero page: present, yet no memory; a chunk
    holding one must not be collapsed (that would make it 2 MiB of memory)."""
    region, address = partly_written
    for offset in range(0, SIZE, PAGE):
        if offset // PAGE % 2:
            region[offset] = 1  # every other page written
        else:
            assert region[offset] == 0  # the rest read
    resident_kb = _smaps_kb(address, "Rss")
    assert resident_kb >= SIZE // 2 // 1024

    collapse_resident_memory()

    assert _smaps_kb(address, "AnonHugePages") == 0
    assert _smaps_kb(address, "Rss") == resident_kb


def test_memory_kept_out_of_huge_pages_stays_out_and_the_rest_still_moves(
    dense: tuple[mmap.mmap, int], refused: tuple[mmap.mmap, int]
) -> None:
    # mmap places the later mapping below the earlier one here, so the refused one is met
    # first: refusing it must not stop the rest.
    for region, _ in (refused, dense):
        region.write(b"\x01" * SIZE)

    result = collapse_resident_memory()

    assert result.unsupported is None
    assert _smaps_kb(refused[1], "AnonHugePages") == 0
    assert _smaps_kb(dense[1], "AnonHugePages") >= 5 * CHUNK // 1024
