"""Asking for replacements and reconciling: read, decide, keep, send, under one lock."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import yaml

from ray_hooks.capacity import autoscaler
from ray_hooks.capacity.record import (
    FAILED,
    REQUESTED,
    CapacityRequest,
    ReplacementAsk,
    failed,
    not_requested,
)
from ray_hooks.capacity.settle import settle
from ray_hooks.capacity.sizing import (
    ClusterShape,
    cluster_full,
    demand,
    full_types,
    read_shape,
    waiting_by_type,
)
from ray_hooks.capacity.store import CapacityUnavailable, Kv, RequestStore, exclusive
from ray_hooks.replacement import (
    Interrupted,
    NodeType,
    NoReplacement,
    Pool,
    choose_replacement,
    cluster_max_workers,
    node_types_from_config,
)

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 600.0
UNAVAILABLE_WINDOW_S = 1800.0
CLUSTER_CONFIG_ENV = "RAY_HOOKS_CLUSTER_CONFIG"
DEFAULT_CLUSTER_CONFIG = "~/ray_bootstrap_config.yaml"


@dataclass(frozen=True)
class ClusterConfig:
    """What the cluster config says that capacity needs: node types and the global cap."""

    node_types: Mapping[str, NodeType]
    max_workers: int | None = None


@dataclass(frozen=True)
class ReconcileResult:
    """What reconcile released, what is still asked for, which pools are still avoided."""

    released: tuple[CapacityRequest, ...]
    outstanding: tuple[CapacityRequest, ...]
    unavailable_pools: tuple[str, ...]


def load_cluster_config(config_path: str | None = None) -> ClusterConfig:
    """The node types and max_workers of the cluster config the head was started with."""
    path = config_path or os.environ.get(CLUSTER_CONFIG_ENV) or DEFAULT_CLUSTER_CONFIG
    with open(os.path.expanduser(path), encoding="utf-8") as config_file:
        config = yaml.safe_load(config_file)
    if not isinstance(config, Mapping):
        raise ValueError(f"{path} is not a cluster config (a YAML mapping)")
    return ClusterConfig(node_types_from_config(config), cluster_max_workers(config))


def load_node_types(config_path: str | None = None) -> dict[str, NodeType]:
    """The node types of the cluster config the head was started with."""
    return dict(load_cluster_config(config_path).node_types)


def request_replacements(
    gcs: Kv,
    asks: Sequence[ReplacementAsk],
    *,
    node_types: Mapping[str, NodeType] | None = None,
    config_path: str | None = None,
    now: datetime | None = None,
    ttl_s: float = DEFAULT_TTL_S,
    remember_s: float = UNAVAILABLE_WINDOW_S,
) -> tuple[CapacityRequest, ...]:
    """Choose and ask for one replacement per ask; one CapacityRequest per ask, same order.

    Never raises for Ray's sake: the drains were already made and stand. When the GCS or
    the cluster config fails, the statuses say so (`failed`, `no-replacement`).
    """
    now = now or datetime.now(UTC)
    if not asks:
        return ()
    try:
        config = (
            ClusterConfig(dict(node_types))
            if node_types is not None
            else load_cluster_config(config_path)
        )
    except (OSError, ValueError, yaml.YAMLError) as exc:
        why = f"cluster config unreadable: {exc}"
        return tuple(not_requested(ask, why) for ask in asks)
    try:
        with exclusive(gcs):
            return _request(gcs, asks, config, now, ttl_s, remember_s)
    except CapacityUnavailable as exc:
        log.exception("capacity requests not made")
        return tuple(not_requested(ask, f"GCS unavailable: {exc}", FAILED) for ask in asks)


def reconcile(gcs: Kv, *, now: datetime | None = None) -> ReconcileResult:
    """Release requests whose replacement joined and whose interrupted node is gone, or that
    expired; resend the demand of the rest (or clear it).

    Raises CapacityUnavailable when the GCS does not answer.
    """
    now = now or datetime.now(UTC)
    with exclusive(gcs):
        store = RequestStore(gcs)
        shape = _shape(gcs, max_workers=None)
        outstanding, released = settle(store, shape, now)
        autoscaler.send(
            gcs, demand(shape, outstanding), v2=shape.autoscaler_v2, ttl_s=DEFAULT_TTL_S
        )
        pools = store.unavailable_pools(now)
    return ReconcileResult(
        released=tuple(released),
        outstanding=tuple(outstanding),
        unavailable_pools=tuple(str(pool) for pool in sorted(pools)),
    )


def _request(
    gcs: Kv,
    asks: Sequence[ReplacementAsk],
    config: ClusterConfig,
    now: datetime,
    ttl_s: float,
    remember_s: float,
) -> tuple[CapacityRequest, ...]:
    store = RequestStore(gcs)
    shape = _shape(gcs, config.max_workers)
    outstanding, _ = settle(store, shape, now)
    existing = {request.instance_id: request for request in outstanding}
    remembered = store.unavailable_pools(now)
    results: list[CapacityRequest] = []
    for ask in asks:
        interrupted = _interrupted(ask, shape)
        if interrupted.pool is not None:
            store.remember(interrupted.pool, now + timedelta(seconds=remember_s))
        if ask.instance_id in existing:
            earlier = existing[ask.instance_id]
            results.append(replace(earlier, reason=f"already asked: {earlier.reason}"))
            continue
        unavailable = set(ask.options.unavailable_pools) | remembered
        request = _decide(ask, interrupted, config, shape, outstanding, unavailable, now, ttl_s)
        results.append(request)
        if request.is_outstanding:
            store.put(request)
            outstanding.append(request)
    try:
        others = autoscaler.foreign_request(gcs, v2=shape.autoscaler_v2)
        kept = autoscaler.send(gcs, demand(shape, outstanding), v2=shape.autoscaler_v2, ttl_s=ttl_s)
    except CapacityUnavailable as exc:
        return tuple(failed(r, exc) if r.status == REQUESTED else r for r in results)
    if kept is not None:  # the coordinator sends ours with its other requesters'
        said = f"; {kept}"
    elif others:
        said = (
            f"; replaced a resource request of {len(others)} bundle(s) someone else had made "
            f"(e.g. {json.dumps(others[0])})"
        )
    else:
        return tuple(results)
    return tuple(
        replace(r, reason=r.reason + said) if r.status == REQUESTED else r for r in results
    )


def _decide(
    ask: ReplacementAsk,
    interrupted: Interrupted,
    config: ClusterConfig,
    shape: ClusterShape,
    outstanding: Sequence[CapacityRequest],
    unavailable: set[Pool],
    now: datetime,
    ttl_s: float,
) -> CapacityRequest:
    waiting = waiting_by_type(outstanding)
    full = full_types(shape, config.node_types, waiting)
    choice = choose_replacement(
        interrupted, config.node_types, unavailable, ask.options.mode, full=full
    )
    if isinstance(choice, NoReplacement):  # the node's own candidates say most: first
        return not_requested(ask, choice.reason)
    no_room = cluster_full(shape, waiting)
    if no_room is not None:
        return not_requested(ask, no_room)
    return CapacityRequest(
        notice_id=ask.notice_id,
        instance_id=ask.instance_id,
        status=REQUESTED,
        reason=choice.reason,
        node_type=choice.node_type,
        market=choice.market,
        bundles=(dict(choice.bundle),),
        label_selector=dict(choice.label_selector),
        steered_by=choice.steered_by,
        requested_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
        interrupted_node_id=ask.ray_node_id,
    )


def _shape(gcs: Kv, max_workers: int | None) -> ClusterShape:
    return read_shape(gcs, autoscaler_v2=autoscaler.autoscaler_v2(gcs), max_workers=max_workers)


def _interrupted(ask: ReplacementAsk, shape: ClusterShape) -> Interrupted:
    node = shape.node(ask.ray_node_id)
    return Interrupted(
        node_type=ask.node_type or (node.node_type if node else None),
        zone=ask.zone or (node.zone if node else None),
    )
