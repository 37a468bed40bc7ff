"""Settling stored requests against the node table: joined, released or expired.

A request whose node joined stays outstanding while the interrupted node lives on (a
replacement that sits idle until the work moves to it must not be taken away by the idle
timeout meanwhile); it is released (`joined`) once the interrupted node is gone, or
`expired` at its expires_at. Released requests leave the KV; the caller resends the rest.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from ray_hooks.capacity.record import EXPIRED, JOINED, CapacityRequest, iso
from ray_hooks.capacity.sizing import DEAD, ClusterShape
from ray_hooks.capacity.store import RequestStore


def settle(
    store: RequestStore, shape: ClusterShape, now: datetime
) -> tuple[list[CapacityRequest], list[CapacityRequest]]:
    """Split the stored requests into still outstanding and released (deleted from the KV)."""
    requests = sorted(store.requests(), key=lambda r: r.requested_at or now)
    taken: set[str | None] = {r.joined_node_id for r in requests if r.joined_node_id}
    outstanding: list[CapacityRequest] = []
    released: list[CapacityRequest] = []
    for stored in requests:
        request = _with_joined_node(stored, shape, taken)
        if request.joined_node_id and _interrupted_gone(request, shape):
            released.append(replace(request, status=JOINED, reason=_joined_reason(request, shape)))
        elif request.expires_at is not None and request.expires_at <= now:
            why = (
                f"the interrupted node still ran at {iso(request.expires_at)}"
                if request.joined_node_id
                else f"no {request.node_type} node joined before {iso(request.expires_at)}"
            )
            released.append(replace(request, status=EXPIRED, reason=why))
        else:
            if request != stored:
                store.put(request)
            outstanding.append(request)
    for request in released:
        store.delete(request.instance_id)
    store.forget_expired_pools(now)
    return outstanding, released


def _with_joined_node(
    request: CapacityRequest, shape: ClusterShape, taken: set[str | None]
) -> CapacityRequest:
    """The request with the node that joined for it: kept while alive, else the first alive
    node of its type that started after the request and no other request claimed."""
    if request.joined_node_id:
        joined = shape.node(request.joined_node_id)
        if joined is not None and joined.state != DEAD:
            return request
        taken.discard(request.joined_node_id)
        request = replace(request, joined_node_id=None)
    if request.node_type is None or request.requested_at is None:
        return request
    for node in shape.alive(request.node_type):
        if node.node_id not in taken and node.started >= request.requested_at:
            taken.add(node.node_id)
            seconds = (node.started - request.requested_at).total_seconds()
            why = (
                f"{request.node_type} node {node.node_id} joined {seconds:.1f} s after the "
                "request; held until the interrupted node is gone"
            )
            return replace(request, joined_node_id=node.node_id, reason=why)
    return request


def _interrupted_gone(request: CapacityRequest, shape: ClusterShape) -> bool:
    node = shape.node(request.interrupted_node_id)
    return node is None or node.state == DEAD


def _joined_reason(request: CapacityRequest, shape: ClusterShape) -> str:
    node = shape.node(request.joined_node_id)
    if node is None or request.requested_at is None:
        joined = f"{request.node_type} node {request.joined_node_id} joined"
        return f"{joined}; the interrupted node is gone"
    seconds = (node.started - request.requested_at).total_seconds()
    return (
        f"{request.node_type} node {node.node_id} joined {seconds:.1f} s after the request; "
        "the interrupted node is gone"
    )
