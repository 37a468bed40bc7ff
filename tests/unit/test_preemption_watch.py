"""The node's preemption watch: one process asks the GCS, the others read its file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray_hooks.preemption import Deadline, _NodeWatch

NODE = "ab" * 28


class CountingGcs:
    """The GcsClient call the watch makes; counts it."""

    def __init__(self) -> None:
        self.draining: dict[str, int] = {}
        self.calls = 0

    def get_draining_nodes(self, timeout: float | None = None) -> dict[str, int]:
        self.calls += 1
        return dict(self.draining)


def wait_for(condition: Any, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_one_watch_per_node_asks_the_gcs_and_every_watch_is_told_once(tmp_path: Path) -> None:
    # GIVEN three processes' watches of one node (the lock is per open file, as across
    # processes), each with a callback
    gcs = CountingGcs()
    watches = [_NodeWatch(NODE, gcs, tmp_path) for _ in range(3)]
    told: list[list[Deadline]] = [[] for _ in watches]
    for watch, seen in zip(watches, told, strict=True):
        watch.subscribe(seen.append)
    assert [watch.leads for watch in watches].count(True) == 1
    assert all(watch.current() is None for watch in watches)

    # WHEN the node starts draining with a deadline
    gcs.draining[NODE] = 1_796_000_000_000
    wait_for(lambda: all(seen for seen in told))
    time.sleep(1.5)

    # THEN every watch knows the deadline and was told exactly once
    for watch, seen in zip(watches, told, strict=True):
        current = watch.current()
        assert current is not None
        assert current.at is not None
        assert int(current.at.timestamp() * 1000) == 1_796_000_000_000
        assert len(seen) == 1
    # AND the GCS was asked about once per second by one of them, not by all three
    assert gcs.calls <= 6


def test_a_drain_without_a_deadline_is_told_with_none(tmp_path: Path) -> None:
    gcs = CountingGcs()
    gcs.draining[NODE] = 0
    watch = _NodeWatch(NODE, gcs, tmp_path)

    current = watch.current()

    assert current is not None
    assert (current.at, current.seconds_left) == (None, None)
