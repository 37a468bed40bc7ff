"""The Ray autoscaler's request API, reached through the GcsClient ``ray_hooks`` holds.

Exactly what ``ray.autoscaler.sdk.request_resources(bundles, bundle_label_selectors)`` does
(that public function needs a connected driver, ``ray.init``, which costs a worker process
and seconds on the head):

- autoscaler v2 (``ray up`` turns it on by default since Ray 2.50: its head start command
  gets ``RAY_enable_autoscaler_v2=1``): one cluster resource constraint through the GCS,
  bundles *and* label selectors (``ray.autoscaler.v2.sdk.request_cluster_resources``);
- autoscaler v1: the JSON list of bundles in the GCS key ``autoscaler_resource_request``
  (``ray_constants.AUTOSCALER_RESOURCE_REQUEST_CHANNEL``); v1 drops label selectors.

Which one runs: the GCS key ``__autoscaler_v2_enabled`` (namespace ``__autoscaler``) that
the v2 monitor sets to ``b"1"``.

The request is persistent and each call replaces the previous one, whoever made it. So
every call sends the whole demand of this cluster's outstanding replacements, and an empty
demand clears it. What the responder sent last is kept in the GCS KV (namespace
``spot-responder``, key ``sent-demand``): a request found in place that differs from it was
made by someone else (a user's own ``request_resources``; Ray Data's and Ray Train v2's
``AutoscalingCoordinator``, which re-sends its own every ~20 s), and the caller says that
it was replaced. It is not merged in: the autoscaler packs every bundle of a request at
once, so another requester's bundles for the nodes already there plus the responder's would
launch those nodes a second time. When that coordinator runs, the demand is also
registered with it, which then sends it with its other requesters' on every tick
(``ray_hooks.capacity.coordinator``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from ray_hooks import compat
from ray_hooks.capacity import coordinator
from ray_hooks.capacity.store import NAMESPACE, RPC_TIMEOUT_S, CapacityUnavailable, Kv

log = logging.getLogger(__name__)

_V1_REQUEST_KEY = b"autoscaler_resource_request"
_V2_ENABLED_KEY = (b"__autoscaler_v2_enabled", b"__autoscaler")  # key, namespace
_SENT_KEY = b"sent-demand"


def autoscaler_v2(gcs: Kv) -> bool:
    """Whether the cluster's autoscaler is v2."""
    key, namespace = _V2_ENABLED_KEY
    try:
        return gcs.internal_kv_get(key, namespace, RPC_TIMEOUT_S) == b"1"
    except Exception as exc:  # ray.exceptions.RpcError
        raise CapacityUnavailable(f"cannot read the autoscaler version: {exc}") from exc


def send(gcs: Kv, demand: Sequence[dict[str, Any]], *, v2: bool, ttl_s: float) -> str | None:
    """Replace the cluster's resource request by `demand` ({resources, label_selector} items),
    and keep it registered with Ray's AutoscalingCoordinator when one runs (which would
    otherwise replace it within 20 s). Returns what that registration says, or None."""
    try:
        if v2:
            compat.request_cluster_resources(gcs, demand)
        else:
            bundles = json.dumps([item["resources"] for item in demand]).encode()
            gcs.internal_kv_put(_V1_REQUEST_KEY, bundles, True, None, RPC_TIMEOUT_S)
    except Exception as exc:  # ray.exceptions.RpcError and friends
        raise CapacityUnavailable(f"cannot send the capacity request: {exc}") from exc
    sent = json.dumps([item["resources"] for item in demand]).encode()
    try:
        gcs.internal_kv_put(_SENT_KEY, sent, True, NAMESPACE, RPC_TIMEOUT_S)
    except Exception as exc:
        raise CapacityUnavailable(f"cannot keep what was sent: {exc}") from exc
    log.info("capacity requested from the autoscaler: %s", json.dumps(list(demand)))
    return coordinator.keep(gcs, demand, ttl_s=ttl_s)


def foreign_request(gcs: Kv, *, v2: bool) -> list[dict[str, float]]:
    """The bundles of the request in place that the responder did not send (or [])."""
    try:
        current = _current_bundles(gcs, v2)
        raw = gcs.internal_kv_get(_SENT_KEY, NAMESPACE, RPC_TIMEOUT_S)
    except Exception as exc:  # ray.exceptions.RpcError and friends
        raise CapacityUnavailable(f"cannot read the current resource request: {exc}") from exc
    sent = [_normal(b) for b in json.loads(raw)] if raw else []
    if sorted(map(json.dumps, map(_normal, current))) == sorted(map(json.dumps, sent)):
        return []
    return [_normal(b) for b in current]


def _current_bundles(gcs: Kv, v2: bool) -> list[dict[str, float]]:
    if not v2:
        raw = gcs.internal_kv_get(_V1_REQUEST_KEY, None, RPC_TIMEOUT_S)
        return [dict(bundle) for bundle in json.loads(raw)] if raw else []
    from ray.autoscaler.v2.sdk import get_cluster_resource_state

    state = get_cluster_resource_state(gcs)
    return [
        dict(item.request.resources_bundle)
        for constraint in state.cluster_resource_constraints
        for item in constraint.resource_requests
        for _ in range(item.count)
    ]


def _normal(bundle: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in sorted(bundle.items())}
