"""Moving dense memory into huge pages after a load (gateway/runtime/huge_pages.py)."""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Iterator

import numpy as np
import pytest

from gateway.runtime.huge_pages import anonymous_mappings, collapse_resident_memory

SIZE = 12 * 1024 * 1024


@pytest.fixture(scope="module")
def supported() -> None:
    reason = collapse_resident_memory().unsupported
    if reason is not None:
        pytest.skip(f"this kernel cannot collapse memory: {reason}")


def _private_mapping(advice: int = mmap.MADV_DONTDUMP) -> Iterator[tuple[mmap.mmap, int]]:
    region = mmap.mmap(-1, SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    # A flag of its own keeps the kernel from merging it with its neighbours, so smaps
    # reports it alone.
    region.madvise(advice)
    anchor = ctypes.c_char.from_buffer(region)
    address = ctypes.addressof(anchor)
    yield region, address
    del anchor
    region.close()


@pytest.fixture
def dense() -> Iterator[tuple[mmap.mmap, int]]:
    yield from _private_mapping()


@pytest.fixture
def sparse() -> Iterator[tuple[mmap.mmap, int]]:
    yield from _private_mapping()


@pytest.fixture
def refused() -> Iterator[tuple[mmap.mmap, int]]:
    """Memory its owner keeps out of huge pages."""
    yield from _private_mapping(mmap.MADV_NOHUGEPAGE)


def _smaps_field(address: int, field: str) -> int:
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


@pytest.mark.usefixtures("supported")
def test_dense_memory_moves_to_huge_pages_and_keeps_its_contents(
    dense: tuple[mmap.mmap, int],
) -> None:
    region, address = dense
    view = np.frombuffer(region, dtype=np.uint8)
    view[:] = np.arange(SIZE, dtype=np.uint64).astype(np.uint8) ^ 0x5A
    expected = view.copy()
    assert _smaps_field(address, "AnonHugePages") == 0
    assert anonymous_mappings()[address] == address + SIZE

    result = collapse_resident_memory()

    assert result.unsupported is None and result.collapsed_bytes >= 8 * 1024 * 1024
    # Every 2 MiB-aligned chunk inside 12 MiB: at least five.
    assert _smaps_field(address, "AnonHugePages") >= 5 * 2048
    assert np.array_equal(view, expected)
    del view


@pytest.mark.usefixtures("supported")
def test_sparse_memory_is_left_alone_so_no_memory_is_added(
    sparse: tuple[mmap.mmap, int],
) -> None:
    region, address = sparse
    view = np.frombuffer(region, dtype=np.uint8)
    view[:: 2 * 1024 * 1024] = 1  # one page in each 2 MiB
    view[: 1024 * 1024] = 1  # and half of the first chunk
    resident_kb = _smaps_field(address, "Rss")

    collapse_resident_memory()

    assert _smaps_field(address, "AnonHugePages") == 0
    assert _smaps_field(address, "Rss") == resident_kb
    del view


@pytest.mark.usefixtures("supported")
def test_memory_kept_out_of_huge_pages_stays_out_and_the_rest_still_moves(
    dense: tuple[mmap.mmap, int], refused: tuple[mmap.mmap, int]
) -> None:
    # mmap places the later mapping below the earlier one here, so the refused one is met
    # first: refusing it must not stop the rest.
    for region, _ in (refused, dense):
        region.write(b"\x01" * SIZE)

    result = collapse_resident_memory()

    assert result.unsupported is None
    assert _smaps_field(refused[1], "AnonHugePages") == 0
    assert _smaps_field(dense[1], "AnonHugePages") >= 5 * 2048
