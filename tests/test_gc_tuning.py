"""The collector settings ``callctl serve`` applies once everything is imported."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from app.gc_tuning import GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD, tune_for_serving


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tuning_freezes_what_exists_and_raises_the_thresholds(restore_gc: None) -> None:
    before = gc.get_freeze_count()
    tune_for_serving()
    assert gc.get_threshold() == (GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
    # Everything alive (at least this test's own module and pytest's objects) is frozen.
    assert gc.get_freeze_count() > before + 1000
    assert gc.get_count()[2] == 0
