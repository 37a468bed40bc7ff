"""Draining Ray nodes through the GCS, reason PREEMPTION, so that Ray books their death right.

A drained node takes no new work; what runs there finishes if it can; once idle the raylet
exits and Ray records the node DEAD "Terminated due to preemption: <message>". Ray never
kills the node at the deadline: the deadline tells Ray (and Ray Train) when the machine goes.

Ray's accounting is what the rules below protect. The GCS records a death as
AUTOSCALER_DRAIN_PREEMPTED - free task retries, uncounted actor restarts - only when the node
was draining with reason PREEMPTION, with a deadline other than 0, and that deadline had
passed when the node died (`GcsNodeManager::InferDeathInfo`); otherwise it is an
UNEXPECTED_TERMINATION and every retry is charged. A second PREEMPTION drain of a draining
node replaces the first, deadline included (measured on Ray 2.60: a later deadline
overwrites an earlier one). Hence:

- the deadline given to Ray is never 0: a notice without a termination time drains with
  "now", so that any death from then on counts as a preemption;
- a node already draining is drained again when the notice's deadline is earlier than the
  one Ray holds, or Ray holds none (0); never with a later one, which would undo the earlier;
- a deadline already past is given as it is (the GCS accepts it): a late notice still drains;
- the GCS answers "accepted" even for an unknown or dead node id, so every drain is read
  back (`confirm`): the node must be draining with the deadline given, or have left already
  as a preempted node (an idle node exits at once); otherwise `drain-unconfirmed`.

The drains of one request are sent side by side (`send_drains`), then read back together
(`confirm`); a slow or failing RPC for one node is that notice's own `drain-failed`, never
the others'. Each accepted drain is told at once to the node's preemption watcher, if a task
there watches (`preemption.tell`), so the workload does not wait for its next poll.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from ray_hooks import compat, preemption
from ray_hooks.contract import format_timestamp
from ray_hooks.nodes import DRAINING, PREEMPTED_DEATH, RayNode, list_nodes

log = logging.getLogger(__name__)

DRAINED = "drained"
ALREADY_DRAINING = "already-draining"
HEAD_NODE = "head-node"
DRAIN_REJECTED = "drain-rejected"
DRAIN_UNCONFIRMED = "drain-unconfirmed"
DRAIN_FAILED = "drain-failed"

HEAD_NODE_MESSAGE = "refused: this is the head node; it is never drained"
_RPC_TIMEOUT_S = 10.0
_GRACE_S = 2.0
#: Drains in flight at once for one request (each is one GCS -> raylet round trip).
MAX_PARALLEL_DRAINS = 16
#: Seconds a drain not yet seen draining is read back again before it is unconfirmed.
READ_BACK_S = 3.0

Clock = Callable[[], datetime]


class NodeDrainer(Protocol):
    """The part of Ray's GcsClient that drains nodes and lists the draining ones."""

    def drain_node(
        self,
        node_id: str,
        reason: int,
        reason_message: str,
        deadline_timestamp_ms: int,
        timeout: float | None = None,
    ) -> tuple[bool, str]: ...

    def get_draining_nodes(self, timeout: float | None = None) -> Mapping[str, int]: ...

    def get_all_node_info(self, timeout: float | None = None) -> Mapping[Any, Any]: ...


@dataclass(frozen=True)
class Drain:
    """What happened when a node was to be drained."""

    outcome: str
    message: str
    #: The deadline Ray holds after this (given now, or held already and kept).
    deadline: datetime | None = None
    #: When the GCS accepted the drain; None when no drain was issued.
    issued_at: datetime | None = None


@dataclass(frozen=True)
class DrainOrder:
    """One node to drain: the earliest deadline any notice of the request gave it."""

    node: RayNode
    deadline: datetime | None
    reason_message: str


def plan(node: RayNode, requested: datetime | None, now: datetime) -> Drain | datetime:
    """The deadline to give Ray for `node`, or the Drain that says why none is sent."""
    if node.is_head:
        log.error("REFUSED to drain node %s: it is the Ray head node", node.node_id)
        return Drain(HEAD_NODE, HEAD_NODE_MESSAGE)
    wanted = now if requested is None else requested
    held = node.drain_deadline if node.state == DRAINING else None
    if held is not None and held <= wanted:
        return Drain(ALREADY_DRAINING, _keeps(held), held)
    return wanted


def send_drains(
    gcs: NodeDrainer, orders: Sequence[DrainOrder], clock: Clock = lambda: datetime.now(UTC)
) -> dict[str, Drain]:
    """Drain every node of `orders` side by side (not yet read back); by node id."""
    if not orders:
        return {}
    now = clock()
    planned = {order.node.node_id: plan(order.node, order.deadline, now) for order in orders}
    to_send = [order for order in orders if isinstance(planned[order.node.node_id], datetime)]
    drains: dict[str, Drain] = {
        node_id: outcome for node_id, outcome in planned.items() if isinstance(outcome, Drain)
    }
    for start in range(0, len(to_send), MAX_PARALLEL_DRAINS):
        chunk = to_send[start : start + MAX_PARALLEL_DRAINS]
        drains.update(_send_side_by_side(gcs, chunk, planned, clock))
    return drains


def _send_side_by_side(
    gcs: NodeDrainer,
    orders: Sequence[DrainOrder],
    planned: Mapping[str, Drain | datetime],
    clock: Clock,
) -> dict[str, Drain]:
    """One daemon thread per drain, each waited for up to its RPC timeout and a little more:
    a Ray whose drain takes no timeout (before 2.57) waits for ever on a raylet that does not
    answer, and that thread is left behind rather than the command with it."""
    answers: dict[str, Drain] = {}
    threads = []
    for order in orders:
        node_id, deadline = order.node.node_id, _as_datetime(planned[order.node.node_id])

        def drain(order: DrainOrder = order, deadline: datetime = deadline) -> None:
            answers[order.node.node_id] = _send(gcs, order, deadline, clock)

        thread = threading.Thread(target=drain, name=f"drain-{node_id[:8]}", daemon=True)
        thread.start()
        threads.append(thread)
    give_up = time.monotonic() + _RPC_TIMEOUT_S + _GRACE_S
    for thread in threads:
        thread.join(max(0.0, give_up - time.monotonic()))
    late = Drain(DRAIN_FAILED, f"drain RPC failed: no answer within {_RPC_TIMEOUT_S:.0f} s")
    return {order.node.node_id: answers.get(order.node.node_id, late) for order in orders}


def _as_datetime(value: Drain | datetime) -> datetime:
    assert isinstance(value, datetime)
    return value


def _send(gcs: NodeDrainer, order: DrainOrder, deadline: datetime, clock: Clock) -> Drain:
    node = order.node
    try:
        accepted, rejection = _issue(gcs, node.node_id, order.reason_message, deadline)
    except Exception as exc:  # ray.exceptions.RpcError, timeouts: this node's failure only
        log.warning("drain of node %s failed: %s", node.node_id, exc)
        return Drain(DRAIN_FAILED, " ".join(f"drain RPC failed: {exc}".split())[:300])
    if not accepted:
        log.warning("GCS rejected the drain of node %s: %s", node.node_id, rejection)
        return Drain(DRAIN_REJECTED, f"drain rejected by GCS: {rejection or 'no reason given'}")
    log.info("drain of node %s accepted (deadline %s)", node.node_id, deadline)
    # The node's own tasks learn it now, not at their poll; beside the read-back, not before
    # it (not a daemon: the command's exit waits the hint's at most two short timeouts).
    threading.Thread(target=preemption.tell, args=(gcs, node.node_id), name="hint").start()
    return Drain(DRAINED, _accepted(node, order.deadline, deadline, clock()), deadline, clock())


def confirm(gcs: NodeDrainer, drains: Mapping[str, Drain]) -> dict[str, Drain]:
    """The drains, each accepted one as Ray now holds it: draining with a deadline no later
    than the one given, or already gone as a preempted node; else `drain-unconfirmed`."""
    issued = {node_id: drain for node_id, drain in drains.items() if drain.outcome == DRAINED}
    if not issued:
        return dict(drains)
    return {**drains, **_read_back(gcs, issued)}


def _read_back(
    gcs: NodeDrainer, drains: Mapping[str, Drain], settle_s: float = READ_BACK_S
) -> dict[str, Drain]:
    """Read the drains back; a node not yet seen draining is read again for up to `settle_s`
    (a Ray before 2.60 lists a drain, deadline included, a moment after accepting it:
    0.2-0.5 s measured on 2.50, at once on 2.57; the node's own snapshot says DRAINING
    about a second later)."""
    give_up = time.monotonic() + settle_s
    while True:
        try:
            draining = compat.draining_nodes(gcs, _RPC_TIMEOUT_S)
            nodes = {
                node.node_id: node
                for node in list_nodes(gcs, draining=draining)
                if node.node_id in drains
            }
        except Exception as exc:  # the drains were accepted; say they could not be read back
            return {
                node_id: replace(drain, outcome=DRAIN_UNCONFIRMED, message=_unread(drain, exc))
                for node_id, drain in drains.items()
            }
        read = {
            node_id: _confirmed(drain, draining.get(node_id), nodes.get(node_id))
            for node_id, drain in drains.items()
        }
        if time.monotonic() >= give_up or all(r.outcome == DRAINED for r in read.values()):
            return read
        time.sleep(0.25)


def _confirmed(drain: Drain, held_ms: int | None, node: RayNode | None) -> Drain:
    given_ms = _ms(drain.deadline)
    if held_ms is not None and held_ms != 0 and held_ms <= given_ms:
        return drain
    gone = node if node is not None and not node.is_alive else None
    if gone is not None and gone.death_reason == PREEMPTED_DEATH:
        return replace(drain, message=f"{drain.message}; the node was idle and has left already")
    if held_ms is None and node is not None and node.state == DRAINING:
        return replace(drain, message=f"{drain.message}; Ray reports the node draining")
    if held_ms is None:
        why = "the node is not draining" if gone is None else f"the node died: {gone.death_message}"
    else:
        held = "no deadline" if held_ms == 0 else f"deadline {format_timestamp(_at(held_ms))}"
        why = f"Ray holds {held}"
    return replace(drain, outcome=DRAIN_UNCONFIRMED, message=f"GCS accepted the drain, but {why}")


def _issue(
    gcs: NodeDrainer, node_id: str, reason_message: str, deadline: datetime
) -> tuple[bool, str]:
    accepted, rejection = compat.drain(gcs, node_id, reason_message, _ms(deadline), _RPC_TIMEOUT_S)
    return bool(accepted), str(rejection)


def _accepted(node: RayNode, requested: datetime | None, given: datetime, now: datetime) -> str:
    message = "drain accepted by GCS (reason PREEMPTION)"
    if node.state == DRAINING:
        held = "none" if node.drain_deadline is None else format_timestamp(node.drain_deadline)
        message = (
            f"drained again: deadline moved earlier to {format_timestamp(given)} (Ray held {held})"
        )
    if requested is None:
        message += "; no termination time known, so the deadline is now"
    elif given < now:
        message += f"; late notice: the deadline {format_timestamp(given)} has passed"
    return message


def _keeps(held: datetime) -> str:
    return (
        f"node is already draining with an earlier or equal deadline "
        f"({format_timestamp(held)}); Ray keeps it"
    )


def _unread(drain: Drain, exc: Exception) -> str:
    return " ".join(f"{drain.message}; but it could not be read back: {exc}".split())[:300]


def _ms(moment: datetime | None) -> int:
    return 0 if moment is None else int(moment.timestamp() * 1000)


def _at(deadline_ms: int) -> datetime:
    return datetime.fromtimestamp(deadline_ms / 1000, tz=UTC)


def earliest(deadlines: Iterable[datetime | None]) -> datetime | None:
    """The earliest of several notices' deadlines for one node; None (now) beats any time."""
    known = list(deadlines)
    if not known or any(deadline is None for deadline in known):
        return None
    return min(d for d in known if d is not None)
