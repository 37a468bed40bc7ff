"""Objects with a copy on a node or owned by a process there, per job, and whether they go.

Ray 2.60 keeps object locations with each object's owner (the process that created the
reference), not in the GCS, and its state API (`list_objects`) says neither where an object
is stored nor who owns it. So this asks the raylets and the owners directly, over the same
RPCs that the state API and `ray memory` use:

1. the node's raylet (`GetNodeStats`): does its object store hold anything at all? If not,
   nothing else is asked;
2. every alive raylet (`GetObjectsInfo`, limited): the object references each worker holds;
   the worker that knows the status of the object's creating task is its owner;
3. each owner (`GetObjectLocationsOwner`): the nodes holding a copy, and where it was spilled.

An object is lost with the node when no copy survives elsewhere (no other node holds it and
it was not spilled off the node) or when its owner lives on the node (the owner's death takes
its objects along, wherever their copies are: holders elsewhere get OwnerDiedError).
Ray 2.60 says which nodes hold a copy, not which copy is the primary one.

What kind of object it is comes from its id (Ray's id layout): the creating task's id
carries the job id in its last 4 bytes and the actor id in the 12 before (all `ff` for a
normal task); `ray.put` objects are numbered from 100,000,001 on (measured on Ray 2.60;
task returns from 1), so they are told apart from task returns by the index.

Every RPC has a timeout; at most OBJECT_QUERY_LIMIT references per raylet and
MAX_OBJECTS_LOCATED objects are looked at, so a node with huge numbers of objects gives an
answer in seconds, with counts that are then lower bounds.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from ray_hooks import compat
from ray_hooks.verdict import ACTOR_CALL_RETURN, PUT, TASK_RETURN, StoredObject

log = logging.getLogger(__name__)

RPC_TIMEOUT_S = 3.0
#: References per raylet reply (Ray applies it per worker and in total).
OBJECT_QUERY_LIMIT = 10_000
#: Objects whose locations are asked of their owners, at most, per analysis.
MAX_OBJECTS_LOCATED = 5_000
#: Object ids per GetObjectLocationsOwner call.
LOCATE_BATCH = 1_000
#: In Ray 2.60 put objects are numbered from here on (returns from 1): see module docstring.
PUT_INDEX_OFFSET = 100_000_000
_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_NIL_TASK_STATUS = 0  # common_pb2.TaskStatus.NIL: "not the owner"
_ACTOR_HANDLE_PREFIX = "f" * 16  # the unique bytes of an actor creation task's id

ByNodeAndJob = dict[str, dict[str, list[StoredObject]]]


class ObjectsUnavailable(RuntimeError):
    """The raylets or owners did not say which objects a node holds."""


@dataclass(frozen=True)
class Raylet:
    node_id: str
    address: str  # host:port of its NodeManager service


@dataclass
class _Holder:
    """A worker process holding references: where to ask about the objects it owns."""

    node_id: str  # the node the worker lives on
    address: str
    worker_id: bytes
    owned: list[bytes] = field(default_factory=list)


@dataclass
class _Reference:
    size: int = -1
    owner: _Holder | None = None
    holder: _Holder | None = None
    #: The nodes whose workers hold a reference to it.
    held_on: set[str] = field(default_factory=set)


def objects_on_nodes(raylets: Collection[Raylet], node_ids: Collection[str]) -> ByNodeAndJob:
    """For each node asked about: per job, the objects with a copy on it."""
    targets = [raylet for raylet in raylets if raylet.node_id in node_ids]
    if not targets or not any(_holds_objects(raylet) for raylet in targets):
        return {}
    references = _references(raylets)
    located = _locations(references)
    found: ByNodeAndJob = defaultdict(lambda: defaultdict(list))
    for object_id, (nodes, spilled_on) in located.items():
        reference = references[object_id]
        owner_node = None if reference.owner is None else reference.owner.node_id
        for node_id in node_ids:
            if node_id not in nodes and spilled_on != node_id and owner_node != node_id:
                continue
            stored = _stored(object_id, reference, node_id, nodes, spilled_on)
            found[node_id][stored.job_id].append(stored)
    for jobs in found.values():
        for objects in jobs.values():
            objects.sort(key=lambda item: (not item.lost, -item.size, item.object_id))
    return found


def object_kind(object_id: str) -> str:
    """PUT, TASK_RETURN or ACTOR_CALL_RETURN, from the object id (hex, 28 bytes)."""
    index = int.from_bytes(bytes.fromhex(object_id[48:56]), "little")
    if index > PUT_INDEX_OFFSET:
        return PUT
    actor_part = object_id[16:40]
    return TASK_RETURN if actor_part == "f" * 24 else ACTOR_CALL_RETURN


def job_of(object_id: str) -> str:
    """The job id (hex) inside an object id: the last 4 bytes of its creating task's id."""
    return object_id[40:48]


def _stored(
    object_id: str, reference: _Reference, node_id: str, nodes: set[str], spilled_on: str | None
) -> StoredObject:
    spilled_elsewhere = spilled_on is not None and spilled_on != node_id
    survives_elsewhere = bool(nodes - {node_id}) or spilled_elsewhere
    owner = reference.owner
    return StoredObject(
        object_id=object_id,
        job_id=job_of(object_id),
        size=reference.size,
        kind=object_kind(object_id),
        only_copy_here=not survives_elsewhere,
        owner_here=owner is not None and owner.node_id == node_id,
        held_elsewhere=bool(reference.held_on - {node_id}),
    )


# ---------------------------------------------------------------- 1. anything stored?


def _holds_objects(raylet: Raylet) -> bool:
    try:
        reply = _node_manager(raylet).GetNodeStats(
            _generated("node_manager_pb2").GetNodeStatsRequest(include_memory_info=False),
            timeout=RPC_TIMEOUT_S,
        )
    except Exception as exc:  # grpc.RpcError
        raise ObjectsUnavailable(f"raylet of node {raylet.node_id[:8]}: {_rpc_error(exc)}") from exc
    stats = reply.store_stats
    owns = any(worker.num_owned_objects for worker in reply.core_workers_stats)
    return bool(stats.num_local_objects or stats.num_object_store_primary_copies or owns)


# ---------------------------------------------------------------- 2. who holds what


def _references(raylets: Iterable[Raylet]) -> dict[str, _Reference]:
    request = _generated("node_manager_pb2").GetObjectsInfoRequest(limit=OBJECT_QUERY_LIMIT)
    calls = {
        raylet: _node_manager(raylet).GetObjectsInfo.future(request, timeout=RPC_TIMEOUT_S)
        for raylet in raylets
    }
    _wait_all(calls.values())
    references: dict[str, _Reference] = {}
    answered = 0
    for raylet, call in calls.items():
        reply = _result(call)
        if reply is None:
            log.warning("raylet of node %s did not list its objects", raylet.node_id[:8])
            continue
        answered += 1
        for stats in reply.core_workers_stats:
            _add_worker(references, raylet.node_id, stats)
    if not answered:
        raise ObjectsUnavailable("no raylet listed its objects")
    return references


def _add_worker(references: dict[str, _Reference], node_id: str, stats: Any) -> None:
    holder = _Holder(
        node_id=node_id, address=f"{stats.ip_address}:{stats.port}", worker_id=stats.worker_id
    )
    for ref in stats.object_refs:
        object_id = bytes(ref.object_id).hex()
        if object_id.startswith(_ACTOR_HANDLE_PREFIX):
            continue
        reference = references.setdefault(object_id, _Reference())
        reference.size = max(reference.size, int(ref.object_size))
        reference.held_on.add(node_id)
        if ref.task_status != _NIL_TASK_STATUS and reference.owner is None:
            reference.owner = holder
        if reference.holder is None:
            reference.holder = holder


# ---------------------------------------------------------------- 3. where the copies are


def _locations(references: dict[str, _Reference]) -> dict[str, tuple[set[str], str | None]]:
    """Object id → (nodes holding a copy, node it was spilled on or "" if spilled off-node)."""
    asked = _who_to_ask(references)
    calls: list[tuple[list[bytes], Any]] = []
    for holder in asked:
        for start in range(0, len(holder.owned), LOCATE_BATCH):
            batch = holder.owned[start : start + LOCATE_BATCH]
            calls.append((batch, _ask_locations(holder, batch)))
    _wait_all(call for _, call in calls)
    located: dict[str, tuple[set[str], str | None]] = {}
    for batch, call in calls:
        reply = _result(call)
        if reply is None:
            continue
        for object_id, info in zip(batch, reply.object_location_infos, strict=False):
            nodes = {bytes(node).hex() for node in info.node_ids}
            spilled_on = None
            if info.spilled_url:  # spilled to the node's disk, or ("") to external storage
                spilled_on = _node_id_or_none(info.spilled_node_id) or ""
            located[object_id.hex()] = (nodes, spilled_on)
    return located


def _who_to_ask(references: dict[str, _Reference]) -> list[_Holder]:
    """The owner of each object (else a holder), each with the ids to ask it about."""
    holders: dict[tuple[str, bytes], _Holder] = {}
    candidates = [
        (object_id, reference)
        for object_id, reference in references.items()
        if reference.size != -1  # -1: not created yet (a running task's return)
    ]
    if len(candidates) > MAX_OBJECTS_LOCATED:
        log.warning("%d objects: only the %d largest located", len(candidates), MAX_OBJECTS_LOCATED)
        candidates.sort(key=lambda item: -item[1].size)
        del candidates[MAX_OBJECTS_LOCATED:]
    for object_id, reference in candidates:
        who = reference.owner or reference.holder
        if who is None:
            continue
        holder = holders.setdefault(
            (who.address, who.worker_id), _Holder(who.node_id, who.address, who.worker_id)
        )
        holder.owned.append(bytes.fromhex(object_id))
    return list(holders.values())


def _ask_locations(holder: _Holder, object_ids: list[bytes]) -> Any:
    stub = _generated("core_worker_pb2_grpc").CoreWorkerServiceStub(_channel(holder.address))
    request = _generated("core_worker_pb2").GetObjectLocationsOwnerRequest(
        intended_worker_id=holder.worker_id, object_ids=object_ids
    )
    return stub.GetObjectLocationsOwner.future(request, timeout=RPC_TIMEOUT_S)


# ---------------------------------------------------------------- gRPC


def _node_manager(raylet: Raylet) -> Any:
    return _generated("node_manager_pb2_grpc").NodeManagerServiceStub(_channel(raylet.address))


def _generated(module: str) -> Any:
    """One of Ray's generated protobuf/gRPC modules (they carry no type information)."""
    return importlib.import_module(f"ray.core.generated.{module}")


_channels: dict[str, Any] = {}


def _channel(address: str) -> Any:
    """One channel per address (Ray's helper: TLS and token auth as the cluster is set up)."""
    if address not in _channels:
        _channels[address] = compat.grpc_channel(
            address,
            [
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ],
        )
    return _channels[address]


def _wait_all(calls: Iterable[Any]) -> None:
    """Until every call (a gRPC future) is done, or the common deadline passed."""
    deadline = time.monotonic() + RPC_TIMEOUT_S + 0.5
    for call in calls:
        with contextlib.suppress(Exception):  # errors and timeouts: _result() reports them
            call.result(timeout=max(0.0, deadline - time.monotonic()))


def _result(call: Any) -> Any:
    """The reply of a finished call, or None (not done in time, or failed)."""
    if not call.done():
        call.cancel()
        return None
    try:
        return call.result()
    except Exception as exc:  # grpc.RpcError, grpc.FutureCancelledError
        log.warning("object query failed: %s", _rpc_error(exc))
        return None


def _node_id_or_none(raw: bytes) -> str | None:
    """A node id in hex; None for Ray's nil id (empty or all ff)."""
    hexed = bytes(raw).hex()
    return hexed if hexed.strip("f") else None


def _rpc_error(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    text = str(details() if callable(details) else exc) or repr(exc)
    return text.splitlines()[0]
