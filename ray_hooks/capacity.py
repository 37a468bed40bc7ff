"""Replacement capacity: ask the Ray autoscaler for the chosen node type, keep the request
until the replacement joined or it expired, and never leave the cluster over-provisioned.

How a request reaches the autoscaler
------------------------------------
Exactly what ``ray.autoscaler.sdk.request_resources(bundles, bundle_label_selectors)`` does,
through the GcsClient ``ray_hooks`` already holds (that public function needs a connected
driver, ``ray.init``, which costs a worker process and seconds on the head):

- autoscaler v2 (``ray up`` turns it on by default since Ray 2.50: its head start command
  gets ``RAY_enable_autoscaler_v2=1``): a cluster resource constraint through the GCS,
  bundles *and* label selectors;
- autoscaler v1: the JSON list of bundles in the GCS key ``autoscaler_resource_request``;
  v1 drops label selectors without a word.

The request is persistent and each call replaces the previous one, whoever made it (a
user's own ``request_resources`` is overwritten too). So every call sends the union of all
outstanding requests, and an empty union clears the constraint.

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
``{CPU:1}`` / market-type=on-demand, arch=arm64         arm_ondemand 2.3 s
``{CPU:1}`` / market-type=spot, arch=arm64              arm_spot 3.1 s
``{CPU:1}`` / node-group=arm_ondemand_worker            arm_ondemand 2.9 s
``{CPU:1}`` / node-group=..., undeclared by the types   nothing in 60 s
``{CPU:1, arm_ondemand_worker:1}`` / none               arm_ondemand 2.3 s   arm_ondemand ~3.5 s
``{CPU:1, x86_ondemand_worker:1}`` / none               x86_ondemand 2.3 s   x86_ondemand 2.3 s
``{CPU:1, x86_spot_worker:1}`` / market-type=spot       x86_spot 3.1 s
======================================================  ===================  ===================

So: (a) a label selector picks the type on autoscaler v2 when it narrows the choice to one
type, and only on labels the type declares in the config (a market-only selector leaves
the pick to the autoscaler: among the matching types it took the first by name; a
selector on a label no type declares launches nothing); v1 drops selectors, which is what
DESIGN §2 saw. (b) A custom resource only that type has picks it on v1 and v2. (c) A bare
shape gets the first type by name that fits - here an on-demand one. Hence a replacement
is asked as one whole node of the type (its CPU/GPU) plus its marker resource, with a
selector on the type's declared ``ray.io/market-type`` and ``ray.io/node-group`` (see
``ray_hooks.replacement.steering``): right on both autoscalers.

Also seen: a constraint that still names the drained node's type brings a new node of that
type once the drained one exited (v2). Unlike what DESIGN §2 says of the v1 autoscaler,
v2 moves a draining node to RAY_STOPPING and no longer counts it toward ``max_workers``:
with a limit of 2, queued work got a third node while the drained one was still alive
(tests/e2e/test_replay_replacement_autoscaler.py). The drain frees that slot a moment
before the replacement is requested; the request came first in every run seen so far.

On the fake provider, the first launch after a drained node exited often takes ~30 s
instead of ~3 s: the provider's ``Node()`` waits 30 s for a raylet that never registers,
then the instance manager retries (an artefact of the fake provider; EC2 launches do not
take that path).

State
-----
Outstanding requests live in the GCS internal KV, namespace ``spot-responder``, one key
per interrupted instance (``capacity-request/<instance id>``: a second notice for the
same instance does not ask twice). Pools interrupted on this cluster are remembered there
too (``unavailable-pool/<type>@<zone>``) for ``UNAVAILABLE_WINDOW_S``, on top of the
pools the Lambda names. A file lock on the head serialises the read-change-send steps of
concurrent ``ray_hooks`` runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import yaml

from ray_hooks import compat
from ray_hooks.contract import CONTRACT_VERSION, InvalidRequest, RespondResponse, parse_envelope
from ray_hooks.replacement import (
    Interrupted,
    NodeType,
    NoReplacement,
    Pool,
    ReplacementOptions,
    choose_replacement,
    node_types_from_config,
    parse_pool,
    parse_replacement_options,
)

log = logging.getLogger(__name__)

NAMESPACE = b"spot-responder"
_REQUEST_PREFIX = b"capacity-request/"
_POOL_PREFIX = b"unavailable-pool/"
DEFAULT_TTL_S = 600.0
UNAVAILABLE_WINDOW_S = 1800.0
CLUSTER_CONFIG_ENV = "RAY_HOOKS_CLUSTER_CONFIG"
DEFAULT_CLUSTER_CONFIG = "~/ray_bootstrap_config.yaml"
_RPC_TIMEOUT_S = 10.0

#: Statuses of a capacity request.
REQUESTED = "requested"  # in the union sent to the autoscaler; outstanding
NO_REPLACEMENT = "no-replacement"  # the policy chose nothing (reason says why)
FAILED = "failed"  # chosen and kept, but the autoscaler was not reached; reconcile resends
JOINED = "joined"  # released: a node of the type joined after the request
EXPIRED = "expired"  # released: nothing joined before expires_at

_NODE_GROUP_LABEL = "ray.io/node-group"
_ZONE_LABEL = "ray.io/availability-zone"
_V1_REQUEST_KEY = (
    b"autoscaler_resource_request"  # ray_constants.AUTOSCALER_RESOURCE_REQUEST_CHANNEL
)
_V2_ENABLED_KEY = (b"__autoscaler_v2_enabled", b"__autoscaler")  # key, namespace


class CapacityUnavailable(RuntimeError):
    """The GCS did not answer while capacity requests were read, kept or sent."""


class Kv(Protocol):
    """The part of Ray's GcsClient used here: internal KV, node table, address."""

    address: str

    def internal_kv_get(
        self, key: bytes, namespace: bytes | None, timeout: float | None = ...
    ) -> bytes | None: ...

    def internal_kv_put(
        self,
        key: bytes,
        value: bytes,
        overwrite: bool,
        namespace: bytes | None,
        timeout: float | None = ...,
    ) -> int: ...

    def internal_kv_del(
        self, key: bytes, del_by_prefix: bool, namespace: bytes | None, timeout: float | None = ...
    ) -> int: ...

    def internal_kv_keys(
        self, prefix: bytes, namespace: bytes | None, timeout: float | None = ...
    ) -> list[bytes]: ...

    def internal_kv_multi_get(
        self, keys: list[bytes], namespace: bytes | None, timeout: float | None = ...
    ) -> dict[bytes, bytes]: ...

    def get_all_node_info(self, timeout: float | None = None) -> Mapping[Any, Any]: ...


# ---------------------------------------------------------------- the record


@dataclass(frozen=True)
class CapacityRequest:
    """One replacement asked for one interrupted instance (or why none was)."""

    notice_id: str
    instance_id: str
    status: str
    reason: str
    node_type: str | None = None
    market: str | None = None
    bundles: tuple[Mapping[str, float], ...] = ()
    label_selector: Mapping[str, str] = field(default_factory=dict)
    steered_by: str | None = None
    requested_at: datetime | None = None
    expires_at: datetime | None = None
    joined_node_id: str | None = None

    @property
    def is_outstanding(self) -> bool:
        return self.status in (REQUESTED, FAILED)

    def to_json(self) -> dict[str, Any]:
        return {
            "notice_id": self.notice_id,
            "instance_id": self.instance_id,
            "node_type": self.node_type,
            "market": self.market,
            "bundles": [dict(bundle) for bundle in self.bundles],
            "label_selector": dict(self.label_selector),
            "steered_by": self.steered_by,
            "requested_at": _iso(self.requested_at),
            "expires_at": _iso(self.expires_at),
            "status": self.status,
            "reason": " ".join(self.reason.split()),
            "joined_node_id": self.joined_node_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CapacityRequest:
        return cls(
            notice_id=str(data["notice_id"]),
            instance_id=str(data["instance_id"]),
            status=str(data["status"]),
            reason=str(data["reason"]),
            node_type=data.get("node_type"),
            market=data.get("market"),
            bundles=tuple(
                {str(k): float(v) for k, v in b.items()} for b in data.get("bundles") or ()
            ),
            label_selector={str(k): str(v) for k, v in (data.get("label_selector") or {}).items()},
            steered_by=data.get("steered_by"),
            requested_at=_parse_iso(data.get("requested_at")),
            expires_at=_parse_iso(data.get("expires_at")),
            joined_node_id=data.get("joined_node_id"),
        )


@dataclass(frozen=True)
class ReplacementAsk:
    """A drained node to replace: which notice, which node, and the notice's options."""

    notice_id: str
    instance_id: str
    options: ReplacementOptions
    ray_node_id: str | None = None
    #: The node's type and zone when the caller knows them; else read from its Ray labels.
    node_type: str | None = None
    zone: str | None = None


@dataclass(frozen=True)
class ReconcileResult:
    """What reconcile released, what is still asked for, which pools are still avoided."""

    released: tuple[CapacityRequest, ...]
    outstanding: tuple[CapacityRequest, ...]
    unavailable_pools: tuple[str, ...]


# ---------------------------------------------------------------- entry points


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
        types = dict(node_types) if node_types is not None else load_node_types(config_path)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        why = f"cluster config unreadable: {exc}"
        return tuple(_not_requested(ask, why) for ask in asks)
    try:
        with _exclusive(gcs):
            return _request(gcs, asks, types, now, ttl_s, remember_s)
    except CapacityUnavailable as exc:
        log.exception("capacity requests not made")
        return tuple(_not_requested(ask, f"GCS unavailable: {exc}", FAILED) for ask in asks)


def reconcile(gcs: Kv, *, now: datetime | None = None) -> ReconcileResult:
    """Release requests whose replacement joined or that expired; resend the rest (or clear).

    Raises CapacityUnavailable when the GCS does not answer.
    """
    now = now or datetime.now(UTC)
    with _exclusive(gcs):
        store = _Store(gcs)
        outstanding, released = _settle(gcs, store, now)
        _send(gcs, outstanding)
        pools = store.unavailable_pools(now)
    return ReconcileResult(
        released=tuple(released),
        outstanding=tuple(outstanding),
        unavailable_pools=tuple(str(pool) for pool in sorted(pools)),
    )


def load_node_types(config_path: str | None = None) -> dict[str, NodeType]:
    """The node types of the cluster config the head was started with."""
    path = config_path or os.environ.get(CLUSTER_CONFIG_ENV) or DEFAULT_CLUSTER_CONFIG
    with open(os.path.expanduser(path), encoding="utf-8") as config_file:
        config = yaml.safe_load(config_file)
    if not isinstance(config, Mapping):
        raise ValueError(f"{path} is not a cluster config (a YAML mapping)")
    return node_types_from_config(config)


# ---------------------------------------------------------------- the contract (respond, reconcile)

#: Outcomes after which a notice's node is replaced: drained, or analysed only (a
#: rebalance recommendation handled by replacing the node before any warning comes).
REPLACED_AFTER = frozenset({"drained", "already-draining", "analysed"})


@dataclass(frozen=True)
class HandledNotice:
    """A respond notice after its drain: what `replacements_for` needs to know of it."""

    notice_id: str
    instance_id: str
    outcome: str
    options: ReplacementOptions | None
    ray_node_id: str | None = None
    node_type: str | None = None


@dataclass(frozen=True)
class RespondWithCapacity(RespondResponse):
    """A respond response that also says which replacement capacity was asked for."""

    capacity_requests: tuple[CapacityRequest, ...] = ()

    def to_json(self) -> dict[str, Any]:
        document = super().to_json()
        document["capacity_requests"] = [r.to_json() for r in self.capacity_requests]
        return document


def notice_replacements(text: str) -> tuple[ReplacementOptions | None, ...] | None:
    """Each notice's `replacement` (same order as the notices); None when no notice has one.

    `text` is a respond request that `contract.parse_request` already accepted.
    """
    notices = json.loads(text)["notices"]
    options = tuple(
        parse_replacement_options(notice.get("replacement"), f"notices[{index}].replacement")
        for index, notice in enumerate(notices)
    )
    return options if any(option is not None for option in options) else None


def replacements_for(
    gcs: Kv, notices: Sequence[HandledNotice], **kwargs: Any
) -> tuple[CapacityRequest, ...]:
    """One CapacityRequest per notice that has replacement options (notices without skipped).

    A node that was neither drained nor analysed (not found, the head, refused) is not
    replaced. Never raises: the drains stand whatever happens here.
    """
    wanted = [notice for notice in notices if notice.options is not None]
    asks = [
        ReplacementAsk(
            notice_id=n.notice_id,
            instance_id=n.instance_id,
            options=n.options,
            ray_node_id=n.ray_node_id,
            node_type=n.node_type,
        )
        for n in wanted
        if n.options is not None and n.outcome in REPLACED_AFTER
    ]
    try:
        asked = iter(request_replacements(gcs, asks, **kwargs))
    except Exception as exc:  # a bug here must not cost the response of the drains
        log.exception("replacement capacity failed")
        asked = iter(_not_requested(ask, f"internal error: {exc!r}", FAILED) for ask in asks)
    return tuple(
        next(asked)
        if notice.outcome in REPLACED_AFTER
        else _not_requested(_ask_of(notice), f"the node was not drained (outcome {notice.outcome})")
        for notice in wanted
    )


def _ask_of(notice: HandledNotice) -> ReplacementAsk:
    return ReplacementAsk(notice.notice_id, notice.instance_id, ReplacementOptions())


@dataclass(frozen=True)
class ReconcileRequest:
    """`{"version": 1, "operation": "reconcile", "cluster": ..., "request_id": ...}`."""

    cluster: str
    request_id: str


def parse_reconcile_request(text: str) -> ReconcileRequest:
    """Parse and validate a v1 `reconcile` request; raise InvalidRequest with a one-line reason."""
    document = parse_envelope(text, "reconcile")
    names = ("cluster", "request_id")
    for name in names:
        value = document.get(name)
        if not isinstance(value, str) or not value.strip() or "\n" in value or "\r" in value:
            raise InvalidRequest(f"request.{name} must be a non-empty one-line string")
    return ReconcileRequest(cluster=document["cluster"], request_id=document["request_id"])


def reconcile_response(
    request: ReconcileRequest, result: ReconcileResult, ray_version: str, total_s: float
) -> dict[str, Any]:
    """The document `ray_hooks reconcile` prints."""
    return {
        "version": CONTRACT_VERSION,
        "cluster": request.cluster,
        "request_id": request.request_id,
        "ray_version": ray_version,
        "released": [r.to_json() for r in result.released],
        "outstanding": [r.to_json() for r in result.outstanding],
        "unavailable_pools": list(result.unavailable_pools),
        "timings": {"total_s": round(total_s, 3)},
    }


# ---------------------------------------------------------------- the steps


def _request(
    gcs: Kv,
    asks: Sequence[ReplacementAsk],
    types: Mapping[str, NodeType],
    now: datetime,
    ttl_s: float,
    remember_s: float,
) -> tuple[CapacityRequest, ...]:
    store = _Store(gcs)
    outstanding, _ = _settle(gcs, store, now)
    existing = {request.instance_id: request for request in outstanding}
    remembered = store.unavailable_pools(now)
    nodes = _node_labels(gcs, [ask.ray_node_id for ask in asks if ask.ray_node_id])
    results: list[CapacityRequest] = []
    for ask in asks:
        interrupted = _interrupted(ask, nodes)
        if interrupted.pool is not None:
            store.remember(interrupted.pool, now + timedelta(seconds=remember_s))
        if ask.instance_id in existing:
            earlier = existing[ask.instance_id]
            results.append(replace(earlier, reason=f"already asked: {earlier.reason}"))
            continue
        unavailable = set(ask.options.unavailable_pools) | remembered
        request = _decide(ask, interrupted, types, unavailable, now, ttl_s)
        results.append(request)
        if request.is_outstanding:
            store.put(request)
            outstanding.append(request)
    try:
        _send(gcs, outstanding)
    except CapacityUnavailable as exc:
        return tuple(_failed(r, exc) if r.status == REQUESTED else r for r in results)
    return tuple(results)


def _decide(
    ask: ReplacementAsk,
    interrupted: Interrupted,
    types: Mapping[str, NodeType],
    unavailable: set[Pool],
    now: datetime,
    ttl_s: float,
) -> CapacityRequest:
    choice = choose_replacement(interrupted, types, unavailable, ask.options.mode)
    if isinstance(choice, NoReplacement):
        return _not_requested(ask, choice.reason)
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
    )


def _settle(
    gcs: Kv, store: _Store, now: datetime
) -> tuple[list[CapacityRequest], list[CapacityRequest]]:
    """Split the stored requests into still outstanding and released (deleted from the KV)."""
    requests = sorted(store.requests(), key=lambda r: r.requested_at or now)
    joined_nodes = _alive_nodes_by_type(gcs)
    taken: set[str] = set()
    outstanding: list[CapacityRequest] = []
    released: list[CapacityRequest] = []
    for request in requests:
        node = _joined_node(request, joined_nodes, taken)
        if node is not None:
            taken.add(node[0])
            seconds = (node[1] - (request.requested_at or now)).total_seconds()
            why = f"{request.node_type} node {node[0]} joined {seconds:.1f} s after the request"
            released.append(replace(request, status=JOINED, reason=why, joined_node_id=node[0]))
        elif request.expires_at is not None and request.expires_at <= now:
            why = f"no {request.node_type} node joined before {_iso(request.expires_at)}"
            released.append(replace(request, status=EXPIRED, reason=why))
        else:
            outstanding.append(request)
    for request in released:
        store.delete(request.instance_id)
    store.forget_expired_pools(now)
    return outstanding, released


def _joined_node(
    request: CapacityRequest,
    nodes: Mapping[str, list[tuple[str, datetime]]],
    taken: set[str],
) -> tuple[str, datetime] | None:
    """The first alive node of the request's type that started after it, not yet claimed."""
    if request.node_type is None or request.requested_at is None:
        return None
    for node_id, started in nodes.get(request.node_type, []):
        if node_id not in taken and started >= request.requested_at:
            return node_id, started
    return None


def _send(gcs: Kv, outstanding: Sequence[CapacityRequest]) -> None:
    """Send the union of the outstanding requests: it replaces whatever was asked before."""
    demand = [
        {"resources": dict(bundle), "label_selector": dict(request.label_selector)}
        for request in outstanding
        for bundle in request.bundles
    ]
    try:
        if _autoscaler_v2(gcs):
            compat.request_cluster_resources(gcs, demand)
        else:
            bundles = json.dumps([item["resources"] for item in demand]).encode()
            gcs.internal_kv_put(_V1_REQUEST_KEY, bundles, True, None, _RPC_TIMEOUT_S)
    except Exception as exc:  # ray.exceptions.RpcError and friends
        raise CapacityUnavailable(f"cannot send the capacity request: {exc}") from exc
    log.info("capacity requested from the autoscaler: %s", json.dumps(demand))


def _autoscaler_v2(gcs: Kv) -> bool:
    key, namespace = _V2_ENABLED_KEY
    return gcs.internal_kv_get(key, namespace, _RPC_TIMEOUT_S) == b"1"


# ---------------------------------------------------------------- nodes


def _node_labels(gcs: Kv, node_ids: Sequence[str | None]) -> dict[str, dict[str, str]]:
    """Labels (with the node type name as ray.io/node-group when unlabelled) per node id."""
    if not node_ids:
        return {}
    wanted = set(node_ids)
    labels: dict[str, dict[str, str]] = {}
    for info in _node_infos(gcs):
        node_id = bytes(info.node_id).hex()
        if node_id in wanted:
            node_labels = dict(info.labels)
            if not node_labels.get(_NODE_GROUP_LABEL) and info.node_type_name:
                node_labels[_NODE_GROUP_LABEL] = str(info.node_type_name)
            labels[node_id] = node_labels
    return labels


def _alive_nodes_by_type(gcs: Kv) -> dict[str, list[tuple[str, datetime]]]:
    """Alive nodes per node type, oldest first: (node id, start time)."""
    by_type: dict[str, list[tuple[str, datetime]]] = {}
    for info in _node_infos(gcs):
        if info.state != 0:  # GcsNodeInfo.ALIVE
            continue
        node_type = dict(info.labels).get(_NODE_GROUP_LABEL) or str(info.node_type_name)
        started = datetime.fromtimestamp(int(info.start_time_ms) / 1000, tz=UTC)
        by_type.setdefault(node_type, []).append((bytes(info.node_id).hex(), started))
    for nodes in by_type.values():
        nodes.sort(key=lambda node: node[1])
    return by_type


def _node_infos(gcs: Kv) -> list[Any]:
    try:
        return list(gcs.get_all_node_info(timeout=_RPC_TIMEOUT_S).values())
    except Exception as exc:
        raise CapacityUnavailable(f"cannot list the Ray nodes: {exc}") from exc


def _interrupted(ask: ReplacementAsk, nodes: Mapping[str, Mapping[str, str]]) -> Interrupted:
    labels = nodes.get(ask.ray_node_id or "", {})
    return Interrupted(
        node_type=ask.node_type or labels.get(_NODE_GROUP_LABEL) or None,
        zone=ask.zone or labels.get(_ZONE_LABEL) or None,
    )


# ---------------------------------------------------------------- the KV


class _Store:
    """Capacity requests and remembered pools in the GCS internal KV."""

    def __init__(self, gcs: Kv) -> None:
        self._gcs = gcs

    def requests(self) -> list[CapacityRequest]:
        values = self._values(_REQUEST_PREFIX)
        requests = []
        for key, value in values.items():
            try:
                requests.append(CapacityRequest.from_json(json.loads(value)))
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("dropping an unreadable capacity request %r", key)
                self._delete(key)
        return requests

    def put(self, request: CapacityRequest) -> None:
        value = json.dumps(request.to_json()).encode()
        self._call(
            self._gcs.internal_kv_put, _key(_REQUEST_PREFIX, request.instance_id), value, True
        )

    def delete(self, instance_id: str) -> None:
        self._delete(_key(_REQUEST_PREFIX, instance_id))

    def remember(self, pool: Pool, until: datetime) -> None:
        value = json.dumps({"pool": str(pool), "until": _iso(until)}).encode()
        self._call(self._gcs.internal_kv_put, _key(_POOL_PREFIX, str(pool)), value, True)

    def unavailable_pools(self, now: datetime) -> set[Pool]:
        return {pool for pool, until in self._pools() if until > now}

    def forget_expired_pools(self, now: datetime) -> None:
        for pool, until in self._pools():
            if until <= now:
                self._delete(_key(_POOL_PREFIX, str(pool)))

    def _pools(self) -> list[tuple[Pool, datetime]]:
        pools = []
        for value in self._values(_POOL_PREFIX).values():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                data = json.loads(value)
                until = _parse_iso(data["until"])
                if until is not None:
                    pools.append((parse_pool(data["pool"]), until))
        return pools

    def _values(self, prefix: bytes) -> dict[bytes, bytes]:
        keys = self._call(self._gcs.internal_kv_keys, prefix)
        if not keys:
            return {}
        values: dict[bytes, bytes] = self._call(self._gcs.internal_kv_multi_get, list(keys))
        return values

    def _delete(self, key: bytes) -> None:
        self._call(self._gcs.internal_kv_del, key, False)

    @staticmethod
    def _call(method: Any, *args: Any) -> Any:
        try:
            return method(*args, NAMESPACE, _RPC_TIMEOUT_S)
        except Exception as exc:  # ray.exceptions.RpcError when the GCS stops answering
            raise CapacityUnavailable(f"GCS internal KV: {exc}") from exc


def _key(prefix: bytes, name: str) -> bytes:
    return prefix + name.encode()


@contextlib.contextmanager
def _exclusive(gcs: Kv) -> Iterator[None]:
    """One ray_hooks at a time reads, changes and sends this cluster's requests."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", gcs.address)
    path = Path(tempfile.gettempdir()) / f"ray_hooks-capacity-{name}.lock"
    with open(path, "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---------------------------------------------------------------- small helpers


def _not_requested(
    ask: ReplacementAsk, reason: str, status: str = NO_REPLACEMENT
) -> CapacityRequest:
    return CapacityRequest(
        notice_id=ask.notice_id,
        instance_id=ask.instance_id,
        status=status,
        reason=reason,
        node_type=None,
    )


def _failed(request: CapacityRequest, exc: Exception) -> CapacityRequest:
    return replace(
        request, status=FAILED, reason=f"{request.reason}; not sent, reconcile retries: {exc}"
    )


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _parse_iso(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value).astimezone(UTC)
