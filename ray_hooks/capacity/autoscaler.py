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
demand clears it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from ray_hooks.capacity.store import RPC_TIMEOUT_S, CapacityUnavailable, Kv

log = logging.getLogger(__name__)

_V1_REQUEST_KEY = b"autoscaler_resource_request"
_V2_ENABLED_KEY = (b"__autoscaler_v2_enabled", b"__autoscaler")  # key, namespace


def autoscaler_v2(gcs: Kv) -> bool:
    """Whether the cluster's autoscaler is v2."""
    key, namespace = _V2_ENABLED_KEY
    try:
        return gcs.internal_kv_get(key, namespace, RPC_TIMEOUT_S) == b"1"
    except Exception as exc:  # ray.exceptions.RpcError
        raise CapacityUnavailable(f"cannot read the autoscaler version: {exc}") from exc


def send(gcs: Kv, demand: Sequence[dict[str, Any]], *, v2: bool) -> None:
    """Replace the cluster's resource request by `demand` ({resources, label_selector} items)."""
    try:
        if v2:
            from ray.autoscaler.v2.sdk import request_cluster_resources

            request_cluster_resources(gcs.address, list(demand), timeout=int(RPC_TIMEOUT_S))
        else:
            bundles = json.dumps([item["resources"] for item in demand]).encode()
            gcs.internal_kv_put(_V1_REQUEST_KEY, bundles, True, None, RPC_TIMEOUT_S)
    except Exception as exc:  # ray.exceptions.RpcError and friends
        raise CapacityUnavailable(f"cannot send the capacity request: {exc}") from exc
    log.info("capacity requested from the autoscaler: %s", json.dumps(list(demand)))
