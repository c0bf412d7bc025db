"""The garbage collector's policy at start-up (gateway/app/heap.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.app.heap import tune_garbage_collector


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
