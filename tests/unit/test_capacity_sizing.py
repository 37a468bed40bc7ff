"""Replacement capacity sized against what the cluster has (ray_hooks.capacity), on a GCS
stand-in: the node table and the internal KV. What goes to the autoscaler is read from the
v1 request key, where the code writes it on a v1 cluster."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from ray_hooks.capacity import (
    JOINED,
    NO_REPLACEMENT,
    REQUESTED,
    ReplacementAsk,
    autoscaler,
    reconcile,
    request_replacements,
)
from ray_hooks.replacement import NodeType, ReplacementOptions

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TYPES = {
    "ray.head.default": NodeType("ray.head.default", {"CPU": 0}, is_head=True, max_workers=0),
    "x86_spot_worker": NodeType(
        "x86_spot_worker", {"CPU": 2.0, "x86_spot_worker": 1.0}, market="spot", arch="x86_64"
    ),
    "x86_spot_worker_2": NodeType(
        "x86_spot_worker_2",
        {"CPU": 2.0, "x86_spot_worker_2": 1.0},
        market="spot",
        arch="x86_64",
        max_workers=2,
    ),
    "x86_ondemand_worker": NodeType(
        "x86_ondemand_worker",
        {"CPU": 2.0, "x86_ondemand_worker": 1.0},
        arch="x86_64",
        max_workers=2,
    ),
}
SPOT_2 = {"CPU": 2.0, "x86_spot_worker_2": 1.0}


@dataclass
class Gcs:
    """The GcsClient calls capacity makes: node table, drains, internal KV (v1 cluster)."""

    nodes: list[Any] = field(default_factory=list)
    draining: dict[str, int] = field(default_factory=dict)
    kv: dict[tuple[bytes, bytes | None], bytes] = field(default_factory=dict)
    address: str = "fake-gcs:6379"

    def add(self, name: str, node_type: str, *, started: datetime = NOW, head: bool = False) -> str:
        node_id = name.encode().ljust(28, b"\0")
        self.nodes.append(
            SimpleNamespace(
                node_id=node_id,
                labels={"ray.io/node-group": node_type},
                node_type_name=node_type,
                state=0,
                state_snapshot=SimpleNamespace(state=2),
                is_head_node=head,
                start_time_ms=int(started.timestamp() * 1000),
            )
        )
        return node_id.hex()

    def kill(self, node_id: str) -> None:
        next(n for n in self.nodes if n.node_id.hex() == node_id).state = 1

    def sent(self) -> list[dict[str, float]]:
        return list(json.loads(self.kv[(b"autoscaler_resource_request", None)]))

    # -- GcsClient
    def get_all_node_info(self, timeout: float | None = None) -> dict[bytes, Any]:
        return {n.node_id: n for n in self.nodes}

    def get_draining_nodes(self, timeout: float | None = None) -> dict[str, int]:
        return dict(self.draining)

    def internal_kv_get(self, key: bytes, namespace: bytes | None, timeout: Any = None) -> Any:
        return self.kv.get((key, namespace))

    def internal_kv_put(self, key: bytes, value: bytes, overwrite: bool, namespace: Any, t=None):
        self.kv[(key, namespace)] = value
        return 1

    def internal_kv_del(self, key: bytes, by_prefix: bool, namespace: Any, t=None) -> int:
        return int(self.kv.pop((key, namespace), None) is not None)

    def internal_kv_keys(self, prefix: bytes, namespace: Any, t=None) -> list[bytes]:
        return [k for k, ns in self.kv if ns == namespace and k.startswith(prefix)]

    def internal_kv_multi_get(self, keys: list[bytes], namespace: Any, t=None) -> dict:
        return {k: self.kv[(k, namespace)] for k in keys if (k, namespace) in self.kv}


def cluster(*, v2: bool = False) -> tuple[Gcs, str]:
    """A head and the warned x86 spot node (draining); the autoscaler v1 unless `v2`."""
    gcs = Gcs()
    gcs.add("head", "ray.head.default", head=True)
    warned = gcs.add("warned", "x86_spot_worker", started=NOW - timedelta(hours=1))
    gcs.draining[warned] = 1
    if v2:
        gcs.kv[(b"__autoscaler_v2_enabled", b"__autoscaler")] = b"1"
    return gcs, warned


def ask(instance: str, node_id: str | None = None, node_type: str = "x86_spot_worker"):
    return ReplacementAsk(f"{instance}#spot", instance, ReplacementOptions(), node_id, node_type)


def test_a_busy_node_of_the_chosen_type_is_counted_so_the_request_launches_one_more() -> None:
    gcs, warned = cluster()
    gcs.add("busy", "x86_spot_worker_2", started=NOW - timedelta(hours=1))

    (request,) = request_replacements(gcs, [ask("i-a", warned)], node_types=TYPES, now=NOW)

    assert (request.status, request.node_type) == (REQUESTED, "x86_spot_worker_2")
    # one bundle for the node that is there, one for the replacement: a floor of two nodes
    assert gcs.sent() == [SPOT_2, SPOT_2]


def test_a_type_at_its_max_workers_is_skipped_with_the_counts_and_the_next_candidate_asked() -> (
    None
):
    gcs, warned = cluster()
    gcs.add("busy-1", "x86_spot_worker_2")
    gcs.add("busy-2", "x86_spot_worker_2")

    (request,) = request_replacements(gcs, [ask("i-a", warned)], node_types=TYPES, now=NOW)

    assert request.node_type == "x86_ondemand_worker", request.reason
    assert "x86_spot_worker_2 (at its max_workers 2: 2 node(s) counted" in request.reason
    assert gcs.sent() == [{"CPU": 2.0, "x86_ondemand_worker": 1.0}]


def test_what_does_not_fit_is_no_replacement_and_the_others_of_the_batch_are_still_asked() -> None:
    gcs, warned = cluster()
    other = gcs.add("warned-2", "x86_spot_worker_2")
    gcs.draining[other] = 1
    gcs.add("od", "x86_ondemand_worker")
    asks = [ask("i-a", warned), ask("i-b", other, "x86_spot_worker_2"), ask("i-c", None)]

    first, second, third = request_replacements(gcs, asks, node_types=TYPES, now=NOW)

    # v1 still counts the draining x86_spot_worker_2 node: one slot left there, taken by i-a
    assert (first.status, first.node_type) == (REQUESTED, "x86_spot_worker_2")
    assert (second.status, second.node_type) == (REQUESTED, "x86_ondemand_worker")
    assert third.status == NO_REPLACEMENT
    assert "x86_ondemand_worker (at its max_workers 2: 1 node(s) counted, 1" in third.reason
    assert sorted(map(json.dumps, gcs.sent())) == sorted(
        map(json.dumps, [SPOT_2, SPOT_2, *[{"CPU": 2.0, "x86_ondemand_worker": 1.0}] * 2])
    )


def test_on_autoscaler_v2_a_draining_node_no_longer_counts_toward_the_floor_or_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gcs, warned = cluster(v2=True)
    gcs.add("busy", "x86_spot_worker_2")
    drained_2 = gcs.add("drained-2", "x86_spot_worker_2")
    gcs.draining[drained_2] = 1
    sent: list[Any] = []

    monkeypatch.setattr(  # v2's request goes through Ray's SDK: caught here instead
        autoscaler, "send", lambda _gcs, demand, v2, ttl_s: sent.append((v2, list(demand)))
    )
    monkeypatch.setattr(autoscaler, "foreign_request", lambda _gcs, v2: [])

    (request,) = request_replacements(gcs, [ask("i-a", warned)], node_types=TYPES, now=NOW)

    assert request.node_type == "x86_spot_worker_2", request.reason
    ((v2, demand),) = sent
    assert v2 is True
    assert [item["resources"] for item in demand] == [SPOT_2, SPOT_2]


def test_the_cluster_at_its_max_workers_gets_no_replacement_with_the_figures(
    tmp_path: Path,
) -> None:
    gcs, warned = cluster()
    gcs.add("busy", "x86_spot_worker_2")
    config = {
        "max_workers": 2,
        "available_node_types": {
            name: {"resources": dict(t.resources), "max_workers": t.max_workers}
            for name, t in TYPES.items()
        },
    }
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump(config))

    (request,) = request_replacements(gcs, [ask("i-a", warned)], config_path=str(path), now=NOW)

    assert request.status == NO_REPLACEMENT
    assert request.reason.startswith("the cluster is at its max_workers 2 (2 worker(s) counted")


def test_when_the_only_candidate_type_is_full_its_figures_are_the_reason_not_the_cluster(
    tmp_path: Path,
) -> None:
    gcs, warned = cluster()
    gcs.add("busy", "x86_spot_worker_2")
    types = {name: t for name, t in TYPES.items() if name != "x86_ondemand_worker"}
    config = {
        "max_workers": 2,  # the cluster is full too: the candidate's own limit says more
        "available_node_types": {
            name: {
                "resources": dict(t.resources),
                "max_workers": 1 if name == "x86_spot_worker_2" else t.max_workers,
            }
            for name, t in types.items()
        },
    }
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump(config))

    (request,) = request_replacements(gcs, [ask("i-a", warned)], config_path=str(path), now=NOW)

    assert request.status == NO_REPLACEMENT
    assert "x86_spot_worker_2 (at its max_workers 1: 1 node(s) counted" in request.reason


def test_a_joined_replacement_is_held_until_the_interrupted_node_is_gone_then_released() -> None:
    gcs, warned = cluster()
    (asked,) = request_replacements(gcs, [ask("i-a", warned)], node_types=TYPES, now=NOW)
    joined = gcs.add("replacement", "x86_spot_worker_2", started=NOW + timedelta(seconds=5))

    held = reconcile(gcs, now=NOW + timedelta(seconds=10))

    assert held.released == ()
    ((outstanding),) = held.outstanding
    assert outstanding.joined_node_id == joined
    assert "held until the interrupted node is gone" in outstanding.reason
    assert gcs.sent() == [SPOT_2]  # the joined node is the floor now: nothing more launches

    gcs.kill(warned)
    released = reconcile(gcs, now=NOW + timedelta(seconds=20))

    assert [(r.status, r.joined_node_id) for r in released.released] == [(JOINED, joined)]
    assert released.released[0].reason.endswith("the interrupted node is gone")
    assert gcs.sent() == []
    assert asked.interrupted_node_id == warned


def test_replacing_a_request_someone_else_made_is_said_in_the_result() -> None:
    gcs, warned = cluster()
    users = [{"CPU": 8.0}]
    gcs.kv[(b"autoscaler_resource_request", None)] = json.dumps(users).encode()

    (first,) = request_replacements(gcs, [ask("i-a", warned)], node_types=TYPES, now=NOW)
    (again,) = request_replacements(gcs, [ask("i-b", None)], node_types=TYPES, now=NOW)

    assert first.status == REQUESTED
    assert (
        'replaced a resource request of 1 bundle(s) someone else had made (e.g. {"CPU": 8.0}'
        in (first.reason)
    )
    assert "someone else" not in again.reason  # what is in place now is the responder's own
