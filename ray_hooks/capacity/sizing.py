"""How much to ask the autoscaler for, given what the cluster already has.

``request_resources`` is a floor on the cluster's TOTAL shape, not "add a node": a bundle
that an existing node of the type covers, busy or not, launches nothing (Ray 2.60,
``autoscaler/v2/sdk.py`` ``request_cluster_resources``; the v2 scheduler places the
constraint on every schedulable node's total resources, ``_enforce_resource_constraints``;
v1's ``ensure_min_cluster_size`` likewise ignores usage). So the demand for a node type T
that has outstanding replacements is one bundle per node of T the autoscaler counts, plus
one per replacement of T still waiting for its node.

Which nodes the autoscaler counts: on v2 only instances that run Ray and are reachable
(``SchedulingNode.is_schedulable``): a draining node is ``RAY_STOPPING`` and counts
neither toward the constraint nor toward ``max_workers``. v1 keeps counting it until it
is gone.

v2 holds one cluster constraint and treats it all or nothing: a bundle that cannot be met
(a type at its ``max_workers``, the cluster's ``max_workers``) leaves the whole constraint
infeasible, so every other replacement with it would wait too. Hence the headroom check
before a replacement is asked: what does not fit is ``no-replacement`` with the reason,
and the rest are asked.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ray_hooks import compat
from ray_hooks.capacity.record import CapacityRequest
from ray_hooks.capacity.store import RPC_TIMEOUT_S, CapacityUnavailable, Kv
from ray_hooks.replacement import NODE_GROUP_LABEL, ZONE_LABEL, NodeType

ALIVE = "ALIVE"
DRAINING = "DRAINING"
DEAD = "DEAD"
_GCS_ALIVE = 0  # gcs_pb2.GcsNodeInfo.ALIVE
_SNAPSHOT_DRAINING = 3  # autoscaler_pb2.NodeStatus... NodeSnapshot.DRAINING


@dataclass(frozen=True)
class ClusterNode:
    """A node of the GCS node table, as sizing and settling need it."""

    node_id: str
    node_type: str | None
    zone: str | None
    state: str
    is_head: bool
    started: datetime


@dataclass(frozen=True)
class ClusterShape:
    """The cluster's nodes, and how the running autoscaler counts them."""

    nodes: tuple[ClusterNode, ...]
    autoscaler_v2: bool
    max_workers: int | None = None  # the cluster config's top-level max_workers

    def counted(self, node_type: str) -> int:
        """Workers of the type the autoscaler counts toward the floor and max_workers."""
        return sum(1 for node in self._counted_workers() if node.node_type == node_type)

    def counted_workers(self) -> int:
        return sum(1 for _ in self._counted_workers())

    def node(self, node_id: str | None) -> ClusterNode | None:
        return next((n for n in self.nodes if node_id and n.node_id == node_id), None)

    def alive(self, node_type: str) -> list[ClusterNode]:
        """Alive, not draining nodes of the type, oldest first."""
        nodes = [n for n in self.nodes if n.node_type == node_type and n.state == ALIVE]
        return sorted(nodes, key=lambda node: node.started)

    def _counted_workers(self) -> Iterable[ClusterNode]:
        counted = (ALIVE,) if self.autoscaler_v2 else (ALIVE, DRAINING)
        return (n for n in self.nodes if not n.is_head and n.state in counted)


def read_shape(gcs: Kv, *, autoscaler_v2: bool, max_workers: int | None) -> ClusterShape:
    """The node table and drain states from the GCS."""
    try:
        draining = compat.draining_nodes(gcs, RPC_TIMEOUT_S)
        infos = list(gcs.get_all_node_info(timeout=RPC_TIMEOUT_S).values())
    except Exception as exc:  # ray.exceptions.RpcError when the GCS stops answering
        raise CapacityUnavailable(f"cannot list the Ray nodes: {exc}") from exc
    return ClusterShape(
        nodes=tuple(_node(info, draining) for info in infos),
        autoscaler_v2=autoscaler_v2,
        max_workers=max_workers,
    )


def _node(info: Any, draining: Mapping[str, int]) -> ClusterNode:
    node_id = bytes(info.node_id).hex()
    labels = dict(info.labels)
    if int(info.state) != _GCS_ALIVE:
        state = DEAD
    elif node_id in draining or int(info.state_snapshot.state) == _SNAPSHOT_DRAINING:
        state = DRAINING
    else:
        state = ALIVE
    return ClusterNode(
        node_id=node_id,
        node_type=labels.get(NODE_GROUP_LABEL) or str(info.node_type_name) or None,
        zone=labels.get(ZONE_LABEL) or None,
        state=state,
        is_head=bool(info.is_head_node),
        started=datetime.fromtimestamp(int(info.start_time_ms) / 1000, tz=UTC),
    )


def waiting_by_type(outstanding: Iterable[CapacityRequest]) -> Counter[str]:
    """Replacements per node type that are asked for and have no node yet."""
    return Counter(r.node_type for r in outstanding if r.is_waiting and r.node_type)


def cluster_full(shape: ClusterShape, waiting: Counter[str]) -> str | None:
    """Why no worker at all may be added (the cluster's max_workers), or None."""
    if shape.max_workers is None:
        return None
    counted, asked = shape.counted_workers(), sum(waiting.values())
    if counted + asked < shape.max_workers:
        return None
    return (
        f"the cluster is at its max_workers {shape.max_workers} ({counted} worker(s) counted "
        f"by the autoscaler, {asked} replacement(s) already asked)"
    )


def full_types(
    shape: ClusterShape, types: Mapping[str, NodeType], waiting: Counter[str]
) -> dict[str, str]:
    """The worker types that are at their max_workers, with the figures."""
    full = {}
    for name, node_type in types.items():
        if node_type.is_head:
            continue
        counted = shape.counted(name)
        if counted + waiting[name] >= node_type.max_workers:
            full[name] = (
                f"at its max_workers {node_type.max_workers}: {counted} node(s) counted, "
                f"{waiting[name]} replacement(s) asked"
            )
    return full


def demand(shape: ClusterShape, outstanding: Sequence[CapacityRequest]) -> list[dict[str, Any]]:
    """What to send: per node type with outstanding requests, a bundle for every node of
    the type the autoscaler counts and one for every replacement still waiting."""
    first: dict[str, CapacityRequest] = {}
    for request in outstanding:
        if request.node_type and request.bundles:
            first.setdefault(request.node_type, request)
    waiting = waiting_by_type(outstanding)
    items: list[dict[str, Any]] = []
    for node_type, request in first.items():
        count = shape.counted(node_type) + waiting[node_type]
        for _ in range(count):
            items.extend(
                {"resources": dict(bundle), "label_selector": dict(request.label_selector)}
                for bundle in request.bundles
            )
    return items
