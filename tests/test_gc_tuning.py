"""The collector policy ``callctl serve`` applies once everything is imported."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from app import gc_tuning
from app.gc_tuning import GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD, tune_for_serving


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tuning_freezes_what_exists_and_sets_the_thresholds(restore_gc: None) -> None:
    before = gc.get_freeze_count()
    thread = tune_for_serving(interval=3600.0)
    assert gc.get_threshold() == (GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
    # Everything alive (at least this test's own module and pytest's objects) is frozen.
    assert gc.get_freeze_count() > before + 1000
    assert thread.daemon and thread.is_alive()


def test_the_timer_frees_old_cycles(monkeypatch: pytest.MonkeyPatch) -> None:
    # A cycle promoted out of the young generation is freed by the timer's full collection.
    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    gc.collect()  # survivors: a and b now sit in the oldest generation
    del a, b
    rounds: list[int] = []

    def one_round(_seconds: float) -> None:
        if rounds:
            raise SystemExit  # stop the loop after one collection
        rounds.append(1)

    monkeypatch.setattr(gc_tuning.time, "sleep", one_round)
    with pytest.raises(SystemExit):
        gc_tuning._collect_every(1.0)
    assert not any(type(o).__name__ == "Node" for o in gc.get_objects())
