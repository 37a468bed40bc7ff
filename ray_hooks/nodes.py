"""The cluster's Ray nodes as the GCS knows them, and which node an EC2 instance is.

An instance is found by the instance id Ray itself records for the node first
(`GcsNodeInfo.instance_id`: on a `ray up` cluster autoscaler v2 exports the EC2 instance id
to each raylet as `RAY_CLOUD_INSTANCE_ID`), then by the node label
`spot-responder/instance-id` (the bundle sets it from IMDS; local clusters set it by hand).
Without either, the instance's private IP finds it, but only when exactly one alive node has
that IP and that node does not carry the id of another instance (several raylets on one
host, as in a local cluster, share an IP: matching one of them would drain the wrong node).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from ray_hooks import compat
from ray_hooks.contract import NodeSummary

INSTANCE_ID_LABEL = "spot-responder/instance-id"
NODE_GROUP_LABEL = "ray.io/node-group"
MARKET_TYPE_LABEL = "ray.io/market-type"

ALIVE = "ALIVE"
DRAINING = "DRAINING"
DEAD = "DEAD"
#: `common_pb2.NodeDeathInfo.Reason` names: how Ray booked a node's death.
PREEMPTED_DEATH = "AUTOSCALER_DRAIN_PREEMPTED"


class NodeTable(Protocol):
    """The part of Ray's GcsClient that lists nodes."""

    def get_all_node_info(self, timeout: float | None = None) -> Mapping[Any, Any]: ...

    def get_draining_nodes(self, timeout: float | None = None) -> Mapping[str, int]: ...


@dataclass(frozen=True)
class RayNode:
    """One Ray node (raylet): who it is, where it runs and whether it still takes work."""

    node_id: str
    ip: str
    instance_id: str | None
    node_group: str | None
    market_type: str | None
    is_head: bool
    state: str
    start_time_ms: int = 0
    #: When Ray booked the node's death (DEAD nodes only), ms since the epoch.
    end_time_ms: int = 0
    #: The deadline of the drain in progress (DRAINING nodes only), when Ray was given one.
    drain_deadline: datetime | None = None
    #: Why the node died (DEAD nodes only), as Ray recorded it.
    death_message: str = ""
    #: The cloud instance id Ray itself recorded (`GcsNodeInfo.instance_id`), if any.
    cloud_instance_id: str | None = None
    #: How Ray booked the death (DEAD nodes only): a `NodeDeathInfo.Reason` name.
    death_reason: str = ""

    @property
    def is_alive(self) -> bool:
        return self.state != DEAD

    def summary(self) -> NodeSummary:
        return NodeSummary(
            ip=self.ip, node_group=self.node_group, market_type=self.market_type, state=self.state
        )


@dataclass(frozen=True)
class NodeMatch:
    """The node found for an instance (None when not found), and how it was found or why not."""

    node: RayNode | None
    explanation: str
    found_by: str | None = None  # "label" or "ip"


def list_nodes(
    gcs: NodeTable, timeout_s: float = 10.0, draining: Mapping[str, int] | None = None
) -> tuple[RayNode, ...]:
    """Every node the GCS knows, alive or dead, with its drain state (`draining`: the GCS's
    draining nodes, id -> deadline ms, when the caller has just read them)."""
    if draining is None:
        draining = compat.draining_nodes(gcs, timeout_s)
    infos = gcs.get_all_node_info(timeout=timeout_s)
    return tuple(node_from_info(info, draining) for info in infos.values())


def node_from_info(info: Any, draining: Mapping[str, int]) -> RayNode:
    """A RayNode from a `gcs_pb2.GcsNodeInfo` and the GCS's draining nodes (id -> deadline ms)."""
    node_id = bytes(info.node_id).hex()
    labels = dict(info.labels)
    dead = _enum_name(info, "state") == DEAD
    return RayNode(
        node_id=node_id,
        ip=str(info.node_manager_address),
        instance_id=labels.get(INSTANCE_ID_LABEL) or None,
        cloud_instance_id=_instance_id(info) or None,
        node_group=labels.get(NODE_GROUP_LABEL) or None,
        market_type=labels.get(MARKET_TYPE_LABEL) or None,
        is_head=bool(info.is_head_node),
        state=_state(info, node_id, draining),
        start_time_ms=int(info.start_time_ms),
        end_time_ms=int(info.end_time_ms) if dead else 0,
        drain_deadline=_deadline(draining.get(node_id)),
        death_message=str(info.death_info.reason_message) if dead else "",
        death_reason=_enum_name(info.death_info, "reason") if dead else "",
    )


def _instance_id(info: Any) -> str:
    """The cloud instance id Ray recorded for the node ("" when none, or on a Ray without it)."""
    return str(getattr(info, "instance_id", "") or "")


def _state(info: Any, node_id: str, draining: Mapping[str, int]) -> str:
    if _enum_name(info, "state") == DEAD:
        return DEAD
    # The GCS learns of a drain at once; the node's own snapshot follows a second later.
    if node_id in draining or _enum_name(info.state_snapshot, "state") == DRAINING:
        return DRAINING
    return ALIVE


def _enum_name(message: Any, field: str) -> str:
    descriptor = message.DESCRIPTOR.fields_by_name[field]
    return str(descriptor.enum_type.values_by_number[getattr(message, field)].name)


def _deadline(deadline_ms: int | None) -> datetime | None:
    if not deadline_ms:
        return None
    return datetime.fromtimestamp(deadline_ms / 1000, tz=UTC)


def find_node(nodes: Iterable[RayNode], instance_id: str, private_ip: str | None) -> NodeMatch:
    """The alive node of an instance: by the instance id Ray recorded, else by label, else by a
    private IP no other alive node has."""
    nodes = tuple(nodes)
    alive = [node for node in nodes if node.is_alive]
    for found_by, how, matches in (
        (
            "ray",
            "found by Ray's instance id",
            [n for n in alive if n.cloud_instance_id == instance_id],
        ),
        (
            "label",
            f"found by label {INSTANCE_ID_LABEL}={instance_id}",
            [n for n in alive if n.instance_id == instance_id],
        ),
    ):
        if matches:
            # A raylet restarted on the same instance leaves its old self behind: the newest.
            return NodeMatch(max(matches, key=lambda node: node.start_time_ms), how, found_by)
    if private_ip is not None:
        by_ip = [node for node in alive if node.ip == private_ip]
        if (
            len(by_ip) == 1
            and by_ip[0].instance_id in (None, instance_id)
            and (by_ip[0].cloud_instance_id in (None, instance_id))
        ):
            return NodeMatch(by_ip[0], f"found by IP {private_ip} (no node has the label)", "ip")
    return NodeMatch(None, _not_found(nodes, alive, instance_id, private_ip))


def _not_found(
    nodes: tuple[RayNode, ...], alive: list[RayNode], instance_id: str, private_ip: str | None
) -> str:
    where = f"label {INSTANCE_ID_LABEL}={instance_id}"
    message = f"no alive Ray node has {where}" + (
        f" or IP {private_ip}" if private_ip is not None else " (no private IP given)"
    )
    same_ip = [node for node in alive if private_ip is not None and node.ip == private_ip]
    if len(same_ip) > 1:
        message += f"; IP {private_ip} is shared by {len(same_ip)} alive nodes, so it is ambiguous"
    elif same_ip:
        message += f"; the node at IP {private_ip} belongs to {same_ip[0].instance_id}"
    dead = [
        node
        for node in nodes
        if not node.is_alive and instance_id in (node.instance_id, node.cloud_instance_id)
    ]
    if dead:
        last = max(dead, key=lambda candidate: candidate.start_time_ms)
        message += f"; node {last.node_id} of this instance is DEAD: {last.death_message}"
    return " ".join(message.split())
