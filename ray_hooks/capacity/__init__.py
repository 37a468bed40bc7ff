"""Replacement capacity: ask the Ray autoscaler for the chosen node type, sized against what
the cluster already has, keep the request until the replacement joined and the interrupted
node is gone (or it expired), and never leave the cluster over-provisioned.

The modules, one job each:

- ``record``: the CapacityRequest record and its statuses;
- ``store``: the requests and interrupted pools in the GCS internal KV, and the lock;
- ``sizing``: the node table as the autoscaler counts it, headroom, the demand to send;
- ``autoscaler``: the request API of autoscaler v1 and v2 through the GcsClient;
- ``settle``: which stored requests joined, are released or expired;
- ``request``: the two entry points, ``request_replacements`` and ``reconcile``;
- ``contract``: capacity in the respond and reconcile documents.

What steers the autoscaler to a node type (measured, Ray 2.60.0, fake_multinode provider,
node types as in the cluster bundle: x86/arm x spot/on-demand, each with a custom resource
named after the type and the labels ``ray.io/market-type``, ``ray.io/node-group``,
``spot-responder/arch``; one request at a time on a cluster without workers; time from the
request to the new node ALIVE in the GCS):

======================================================  ===================  ===================
request: bundle / label selector                        autoscaler v2        autoscaler v1
======================================================  ===================  ===================
``{CPU:1}`` / none                                      arm_ondemand 4.1 s
``{CPU:1}`` / market-type=on-demand                     arm_ondemand 3.0 s   x86_spot (wrong) 2 s
``{CPU:1}`` / market-type=spot                          arm_spot 5.2 s
``{CPU:1}`` / node-group=arm_ondemand_worker            arm_ondemand 2.9 s
``{CPU:1}`` / node-group=..., undeclared by the types   nothing in 60 s
``{CPU:1, arm_ondemand_worker:1}`` / none               arm_ondemand 2.3 s   arm_ondemand ~3.5 s
``{CPU:1, x86_spot_worker:1}`` / market-type=spot       x86_spot 3.1 s
======================================================  ===================  ===================

So a label selector picks the type on v2 only when it narrows the choice to one type and
only on labels the type declares; v1 drops selectors; a custom resource only that type has
picks it on both. Hence a replacement is asked as one whole node of the type (its CPU/GPU)
plus its marker resource, with a selector on the type's declared labels
(``ray_hooks.replacement.steering``), repeated as ``sizing`` says.

On the fake provider, the first launch after a drained node exited often takes ~30 s
instead of ~3 s: the provider's ``Node()`` waits 30 s for a raylet that never registers,
then the instance manager retries (an artefact of the fake provider).
"""

from ray_hooks.capacity.contract import (
    REPLACED_AFTER,
    HandledNotice,
    ReconcileRequest,
    RespondWithCapacity,
    notice_replacements,
    parse_reconcile_request,
    reconcile_response,
    replacements_for,
)
from ray_hooks.capacity.record import (
    EXPIRED,
    FAILED,
    JOINED,
    NO_REPLACEMENT,
    REQUESTED,
    CapacityRequest,
    ReplacementAsk,
)
from ray_hooks.capacity.request import (
    CLUSTER_CONFIG_ENV,
    DEFAULT_CLUSTER_CONFIG,
    DEFAULT_TTL_S,
    UNAVAILABLE_WINDOW_S,
    ClusterConfig,
    ReconcileResult,
    load_cluster_config,
    load_node_types,
    reconcile,
    request_replacements,
)
from ray_hooks.capacity.store import NAMESPACE, CapacityUnavailable, Kv

__all__ = [
    "CLUSTER_CONFIG_ENV",
    "DEFAULT_CLUSTER_CONFIG",
    "DEFAULT_TTL_S",
    "EXPIRED",
    "FAILED",
    "JOINED",
    "NAMESPACE",
    "NO_REPLACEMENT",
    "REPLACED_AFTER",
    "REQUESTED",
    "UNAVAILABLE_WINDOW_S",
    "CapacityRequest",
    "CapacityUnavailable",
    "ClusterConfig",
    "HandledNotice",
    "Kv",
    "ReconcileRequest",
    "ReconcileResult",
    "ReplacementAsk",
    "RespondWithCapacity",
    "load_cluster_config",
    "load_node_types",
    "notice_replacements",
    "parse_reconcile_request",
    "reconcile",
    "reconcile_response",
    "replacements_for",
    "request_replacements",
]
