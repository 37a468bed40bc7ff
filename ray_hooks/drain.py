"""Draining one Ray node through the GCS, reason PREEMPTION, with the notice's deadline.

A drained node takes no new work; what runs there finishes if it can; once idle the raylet
exits and Ray records the node DEAD "Terminated due to preemption: <message>". Ray never
kills the node at the deadline: the deadline only tells Ray (and Ray Train) when the
machine goes away, and Ray counts a death as preemption only after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from ray_hooks import compat
from ray_hooks.cluster import ClusterUnreachable
from ray_hooks.contract import format_timestamp
from ray_hooks.nodes import DRAINING, RayNode

log = logging.getLogger(__name__)

DRAINED = "drained"
ALREADY_DRAINING = "already-draining"
HEAD_NODE = "head-node"
DRAIN_REJECTED = "drain-rejected"

HEAD_NODE_MESSAGE = "refused: this is the head node; it is never drained"
_RPC_TIMEOUT_S = 10.0


class NodeDrainer(Protocol):
    """The part of Ray's GcsClient that drains nodes."""

    def drain_node(
        self,
        node_id: str,
        reason: int,
        reason_message: str,
        deadline_timestamp_ms: int,
        timeout: float | None = None,
    ) -> tuple[bool, str]: ...


@dataclass(frozen=True)
class Drain:
    """What happened when a node was to be drained."""

    outcome: str
    message: str
    #: The deadline Ray was given (or already had, for a node already draining).
    deadline: datetime | None = None
    #: When the GCS accepted the drain; None when no drain was issued.
    issued_at: datetime | None = None


def effective_deadline(requested: datetime | None, now: datetime) -> datetime | None:
    """The deadline to give Ray: the requested one, or now when it has already passed."""
    if requested is None:
        return None
    return max(requested, now)


def drain_node(
    gcs: NodeDrainer,
    node: RayNode,
    deadline: datetime | None,
    reason_message: str,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Drain:
    """Drain `node` unless it is the head or already draining; never drain twice."""
    if node.is_head:
        log.error("REFUSED to drain node %s: it is the Ray head node", node.node_id)
        return Drain(HEAD_NODE, HEAD_NODE_MESSAGE)
    if node.state == DRAINING:
        return Drain(ALREADY_DRAINING, _already_draining(node), deadline=node.drain_deadline)
    now = clock()
    given = effective_deadline(deadline, now)
    accepted, rejection = _issue(gcs, node.node_id, reason_message, given)
    if not accepted:
        log.warning("GCS rejected the drain of node %s: %s", node.node_id, rejection)
        return Drain(DRAIN_REJECTED, f"drain rejected by GCS: {rejection or 'no reason given'}")
    log.info("drain of node %s accepted (deadline %s)", node.node_id, given)
    message = "drain accepted by GCS (reason PREEMPTION)"
    if deadline is not None and given != deadline:
        message += f"; the deadline {format_timestamp(deadline)} had passed, so Ray was given now"
    return Drain(DRAINED, message, deadline=given, issued_at=clock())


def _issue(
    gcs: NodeDrainer, node_id: str, reason_message: str, deadline: datetime | None
) -> tuple[bool, str]:
    deadline_ms = 0 if deadline is None else int(deadline.timestamp() * 1000)
    try:
        accepted, rejection = compat.drain(
            gcs, node_id, reason_message, deadline_ms, _RPC_TIMEOUT_S
        )
    except Exception as exc:  # ray.exceptions.RpcError and friends
        raise ClusterUnreachable(f"drain of node {node_id} failed: {exc}") from exc
    return bool(accepted), str(rejection)


def _already_draining(node: RayNode) -> str:
    if node.drain_deadline is None:
        return "node is already draining; not drained again"
    return (
        "node is already draining (deadline "
        f"{format_timestamp(node.drain_deadline)}); not drained again"
    )
