"""Random identifiers: kernel randomness taken in blocks, each byte used once."""

from __future__ import annotations

import os

import pytest

from app.sip.ids import (
    MAGIC_COOKIE,
    new_branch,
    new_call_id,
    new_tag,
    random_below,
    random_bytes,
    random_hex,
)


def test_identifiers_have_their_shapes_and_do_not_repeat() -> None:
    branches = {new_branch() for _ in range(5000)}
    tags = {new_tag() for _ in range(5000)}
    call_ids = {new_call_id("h.example") for _ in range(5000)}
    assert len(branches) == len(tags) == len(call_ids) == 5000
    assert all(b.startswith(MAGIC_COOKIE) and len(b) == len(MAGIC_COOKIE) + 24 for b in branches)
    assert all(len(t) == 24 and int(t, 16) >= 0 for t in tags)
    assert all(c.endswith("@h.example") for c in call_ids)


def test_blocks_are_sliced_without_reuse_across_refills() -> None:
    # More than one block's worth, in odd sizes: every slice is fresh and of its size.
    pieces = [random_bytes(n) for n in [7, 13, 4096, 1, 4095, 33] * 20]
    assert [len(p) for p in pieces] == [7, 13, 4096, 1, 4095, 33] * 20
    long = [p for p in pieces if len(p) >= 13]
    assert len(set(long)) == len(long)
    assert len(random_hex(12)) == 24


def test_random_below_stays_in_range_and_spreads() -> None:
    values = [random_below(10) for _ in range(5000)]
    assert set(values) == set(range(10))
    assert all(0 <= random_below(2**31 - 1) < 2**31 - 1 for _ in range(1000))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_draws_fresh_bytes() -> None:
    random_bytes(1)  # a block is loaded in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what it draws next must not be what the parent draws next
        os.close(read)
        os.write(write, random_bytes(16))
        os._exit(0)
    os.close(write)
    parent_next = random_bytes(16)
    child_next = os.read(read, 16)
    os.waitpid(pid, 0)
    os.close(read)
    assert len(child_next) == 16
    assert child_next != parent_next
