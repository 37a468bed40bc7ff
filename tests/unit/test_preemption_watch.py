"""The node's preemption watch: one process asks the GCS, the others read its file."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from ray_hooks import preemption
from ray_hooks.preemption import Deadline, _NodeWatch, tell

NODE = "ab" * 28
HERE = "127.0.0.1"


class CountingGcs:
    """The GcsClient calls the watch makes (draining nodes, Ray's KV); counts the reads."""

    def __init__(self) -> None:
        self.draining: dict[str, int] = {}
        self.kv: dict[tuple[bytes, bytes | None], bytes] = {}
        self.calls = 0

    def get_draining_nodes(self, timeout: float | None = None) -> dict[str, int]:
        self.calls += 1
        return dict(self.draining)

    def internal_kv_put(
        self, key: bytes, value: bytes, overwrite: bool, namespace: bytes | None, timeout: float
    ) -> int:
        self.kv[key, namespace] = value
        return 1

    def internal_kv_get(self, key: bytes, namespace: bytes | None, timeout: float) -> bytes | None:
        return self.kv.get((key, namespace))


def wait_for(condition: Any, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_one_watch_per_node_asks_the_gcs_and_every_watch_is_told_once(tmp_path: Path) -> None:
    # GIVEN three processes' watches of one node (the lock is per open file, as across
    # processes), each with a callback
    gcs = CountingGcs()
    watches = [_NodeWatch(NODE, gcs, tmp_path, HERE) for _ in range(3)]
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
    watch = _NodeWatch(NODE, gcs, tmp_path, HERE)

    current = watch.current()

    assert current is not None
    assert (current.at, current.seconds_left) == (None, None)


@pytest.fixture
def slow_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll so slow that only a hint can tell the watch in time."""
    monkeypatch.setattr(preemption, "POLL_S", 30.0)
    monkeypatch.setattr(preemption, "HINT_GAP_S", 5.0)


@pytest.mark.usefixtures("slow_poll")
def test_a_hint_from_the_drain_tells_the_node_at_once_not_at_the_next_poll(
    tmp_path: Path,
) -> None:
    # GIVEN a node's watch and a follower, polling every 30 s
    gcs = CountingGcs()
    leader, follower = (_NodeWatch(NODE, gcs, tmp_path, HERE) for _ in range(2))
    assert leader.leads
    assert not follower.leads
    time.sleep(0.2)

    # WHEN the node is drained and the drain command tells the node
    gcs.draining[NODE] = 1_796_000_000_000
    started = time.monotonic()
    delivered = tell(gcs, NODE)

    # THEN both processes know within a fraction of a second
    assert delivered
    wait_for(lambda: follower.current() is not None, timeout_s=2)
    assert time.monotonic() - started < 2
    assert leader.current() is not None


@pytest.mark.usefixtures("slow_poll")
def test_a_drain_the_gcs_lists_only_a_moment_after_the_hint_is_seen_within_a_second(
    tmp_path: Path,
) -> None:
    # GIVEN a GCS that lists a drain 0.4 s after accepting it (Ray 2.50 does)
    gcs = CountingGcs()
    watch = _NodeWatch(NODE, gcs, tmp_path, HERE)
    time.sleep(0.2)

    # WHEN the drain command hints at once, before the drain is listed
    assert tell(gcs, NODE)
    time.sleep(0.4)
    gcs.draining[NODE] = 1_796_000_000_000
    shown = time.monotonic()

    # THEN the watch re-reads and sees it within a second, not at its 30 s poll
    wait_for(lambda: watch.current() is not None, timeout_s=3)
    assert time.monotonic() - shown < 1.0


@pytest.mark.usefixtures("slow_poll")
def test_forged_and_repeated_hints_cost_at_most_one_gcs_read_per_gap(tmp_path: Path) -> None:
    # GIVEN a watch whose port is known
    gcs = CountingGcs()
    watch = _NodeWatch(NODE, gcs, tmp_path, HERE)
    host, port = gcs.kv[b"preemption-hint/" + NODE.encode(), b"spot-responder"].decode().split(":")
    time.sleep(0.2)
    before = gcs.calls

    # WHEN 40 hints for another node and 120 for this one come within four seconds
    for said in [b"cd" * 28] * 40 + [NODE.encode()] * 120:
        with socket.create_connection((host, int(port)), timeout=1) as connection:
            connection.sendall(said)
        time.sleep(0.025)

    # THEN the GCS was read for one of them only, at once and four times more while no
    # drain showed (about one read a second), and nothing was invented
    assert gcs.calls - before <= 6
    assert watch.current() is None


def test_telling_a_node_nobody_watches_is_a_quiet_no(tmp_path: Path) -> None:
    gcs = CountingGcs()

    assert tell(gcs, NODE) is False
    # a watcher that left: its port is gone
    with socket.create_server((HERE, 0)) as gone:
        port = gone.getsockname()[1]
    gcs.kv[b"preemption-hint/" + NODE.encode(), b"spot-responder"] = f"{HERE}:{port}".encode()
    assert tell(gcs, NODE) is False
