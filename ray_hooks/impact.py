"""What the interruption of a node costs, per Ray job, and whether Ray will recover it.

One function per kind of thing on a node, each answering `{node_id: {job_id: [items]}}` for
the nodes asked about, in bounded queries to Ray (filtered at the source where Ray can,
limited, timed); `node_impacts` runs them side by side and puts them together into one
JobImpact per job, judged by `ray_hooks.verdict`.

- running tasks: Ray's state API (task events, source-filtered to RUNNING, limited, timed),
  with their attempt number; whether retries are left is judged by Ray's defaults, because
  Ray 2.60 does not publish a running task's own max_retries (see ray_hooks.verdict).
- alive actors: the GCS actor table (source-filtered to ALIVE), which, unlike the state
  API, has `max_restarts` and the restarts used - what decides whether Ray brings it back.
- objects with a copy on the node: the raylets and the objects' owners (ray_hooks.objects).

When tasks or actors cannot be listed, the impact is unknown (ImpactUnavailable); when only
the objects cannot, each job says so in its reasons and is judged at-risk.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections import defaultdict
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ray_hooks import compat
from ray_hooks.contract import MAX_LISTED_ITEMS, ActorSummary, JobImpact, TaskSummary
from ray_hooks.objects import Raylet, objects_on_nodes
from ray_hooks.verdict import (
    ACTOR_CALL,
    ACTOR_CREATION,
    TASK,
    JobOnNode,
    PlacementGroupOnNode,
    StoredObject,
    judge,
    objects_summary,
    retries_left,
)

log = logging.getLogger(__name__)

#: Upper bound of the tasks fetched in one query; beyond it, counts are lower bounds.
TASK_QUERY_LIMIT = 10_000
QUERY_TIMEOUT_S = 5

#: Actors that their Ray library replaces by itself when their node goes (class names).
SERVE_REPLICA_PREFIX = "ServeReplica:"
SELF_HEALING_CLASSES = {"RayTrainWorker": "Ray Train", "_MapWorker": "Ray Data"}

_TASK_KINDS = {"ACTOR_TASK": ACTOR_CALL, "ACTOR_CREATION_TASK": ACTOR_CREATION}

Item = TypeVar("Item")
ByNodeAndJob = dict[str, dict[str, list[Item]]]


class ImpactUnavailable(RuntimeError):
    """Ray could not say what runs on the node (dashboard down, timeout)."""


def node_impacts(
    address: str, gcs: Any, node_ids: Mapping[str, bool]
) -> dict[str, tuple[JobImpact, ...]]:
    """For each node (id -> whether it dies as a preempted node): one JobImpact per Ray job
    that the node's death touches, jobs in id order."""
    if not node_ids:
        return {}
    support = compat.probe()
    if compat.IMPACT in support.degraded:
        raise ImpactUnavailable(support.degraded[compat.IMPACT])
    raylets = alive_raylets(gcs)
    objects_gap = support.degraded.get(compat.OBJECTS)
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="impact") as pool:
        tasks_query = pool.submit(running_tasks, address, node_ids)
        objects_query = pool.submit(
            _no_objects if objects_gap else objects_on_nodes, raylets, node_ids
        )
        groups_query = pool.submit(placement_groups_on_nodes, address, node_ids)
        actors, owned = alive_actors(gcs, node_ids)
        drivers = drivers_on_nodes(gcs, node_ids)
        tasks = tasks_query.result()
        try:
            objects, objects_unknown = objects_query.result(), ""
        except Exception as exc:  # ObjectsUnavailable, grpc errors: the rest still stands
            log.warning("objects on the node unknown: %s", exc)
            objects, objects_unknown = {}, " ".join(str(exc).split())[:200]
        if objects_gap:
            objects_unknown = objects_gap[:200]
        groups = groups_query.result()
    return {
        node_id: _per_job(
            _NodeFindings(
                tasks=tasks.get(node_id, {}),
                actors=actors.get(node_id, {}),
                owned_actors=owned.get(node_id, {}),
                objects=objects.get(node_id, {}),
                placement_groups=groups.get(node_id, {}),
                drivers=drivers.get(node_id, set()),
                objects_unknown=objects_unknown,
            ),
            preempted,
        )
        for node_id, preempted in node_ids.items()
    }


def _no_objects(raylets: Collection[Raylet], node_ids: Collection[str]) -> dict[str, Any]:
    """This Ray's object-id layout is not known: its objects are not classified."""
    return {}


def running_tasks(
    address: str, node_ids: Collection[str], now_ms: float | None = None
) -> ByNodeAndJob[TaskSummary]:
    """Tasks RUNNING on the nodes (drivers excluded), longest-running first."""
    from ray.util.state import list_tasks

    filters: list[tuple[str, str, str | bool | int | float]] = [("state", "=", "RUNNING")]
    if len(node_ids) == 1:
        filters.append(("node_id", "=", next(iter(node_ids))))
    try:
        tasks = list_tasks(
            address=address,
            filters=filters,
            limit=TASK_QUERY_LIMIT,
            timeout=QUERY_TIMEOUT_S,
            detail=True,
            raise_on_missing_output=False,
        )
    except Exception as exc:  # the state API raises RayStateApiException, requests errors, ...
        raise ImpactUnavailable(f"running tasks unknown: {exc}") from exc
    if len(tasks) >= TASK_QUERY_LIMIT:
        log.warning("more than %d running tasks: task counts are lower bounds", TASK_QUERY_LIMIT)
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    found: ByNodeAndJob[TaskSummary] = defaultdict(lambda: defaultdict(list))
    for task in tasks:
        if task.node_id is not None and task.node_id in node_ids and task.type != "DRIVER_TASK":
            found[task.node_id][task.job_id].append(_task_summary(task, now_ms))
    for jobs in found.values():
        for summaries in jobs.values():
            summaries.sort(key=lambda summary: -summary.running_s)
    return found


def alive_actors(
    gcs: Any, node_ids: Collection[str]
) -> tuple[ByNodeAndJob[ActorSummary], ByNodeAndJob[ActorSummary]]:
    """Actors ALIVE on the nodes; and actors elsewhere whose owner lives on one of the nodes
    (not detached: Ray destroys them with their owner)."""
    try:
        actors = compat.actor_table(gcs, QUERY_TIMEOUT_S, "ALIVE")
    except Exception as exc:  # ray.exceptions.RpcError, TimeoutError
        raise ImpactUnavailable(f"alive actors unknown: {exc}") from exc
    here: ByNodeAndJob[ActorSummary] = defaultdict(lambda: defaultdict(list))
    owned: ByNodeAndJob[ActorSummary] = defaultdict(lambda: defaultdict(list))
    for actor in actors.values():
        node_id = bytes(actor.node_id).hex()
        owner_node = bytes(actor.owner_address.node_id).hex()
        job_id = bytes(actor.job_id).hex()
        if node_id in node_ids:
            here[node_id][job_id].append(_actor_summary(actor, owner_node == node_id))
        elif owner_node in node_ids and not actor.is_detached:
            owned[owner_node][job_id].append(_actor_summary(actor, True))
    for found in (here, owned):
        for jobs in found.values():
            for summaries in jobs.values():
                summaries.sort(key=lambda item: (item.class_name, item.name, item.actor_id))
    return here, owned


def drivers_on_nodes(gcs: Any, node_ids: Collection[str]) -> dict[str, set[str]]:
    """The jobs (ids) whose driver runs on each node, from the GCS job table."""
    try:
        jobs = gcs.get_all_job_info(
            skip_submission_job_info_field=True,
            skip_is_running_tasks_field=True,
            timeout=QUERY_TIMEOUT_S,
        )
    except Exception as exc:  # ray.exceptions.RpcError
        raise ImpactUnavailable(f"jobs unknown: {exc}") from exc
    found: dict[str, set[str]] = defaultdict(set)
    for job in jobs.values():
        node_id = bytes(job.driver_address.node_id).hex()
        if not job.is_dead and node_id in node_ids:
            found[node_id].add(bytes(job.job_id).hex())
    return found


def placement_groups_on_nodes(
    address: str, node_ids: Collection[str]
) -> ByNodeAndJob[PlacementGroupOnNode]:
    """Placement groups with bundles on the nodes (Ray's state API); {} when Ray cannot say."""
    from ray.util.state import list_placement_groups

    try:
        groups = list_placement_groups(
            address=address,
            limit=TASK_QUERY_LIMIT,
            timeout=QUERY_TIMEOUT_S,
            detail=True,
            raise_on_missing_output=False,
        )
    except Exception as exc:  # a missing placement group is not worth the whole analysis
        log.warning("placement groups unknown: %s", exc)
        return {}
    found: ByNodeAndJob[PlacementGroupOnNode] = defaultdict(lambda: defaultdict(list))
    for group in groups:
        if str(group.state) == "REMOVED":
            continue
        bundles = list(group.bundles or ())
        placed = [str(bundle.get("node_id") or "") for bundle in bundles]
        for node_id in set(placed) & set(node_ids):
            found[node_id][str(group.creator_job_id)].append(
                PlacementGroupOnNode(
                    placement_group_id=str(group.placement_group_id),
                    name=str(group.name or ""),
                    strategy=str(getattr(group, "strategy", "") or ""),
                    bundles_here=placed.count(node_id),
                    bundles=len(bundles),
                )
            )
    return found


def alive_raylets(gcs: Any) -> tuple[Raylet, ...]:
    """The raylets of the alive (and draining) nodes, where objects are asked about."""
    gcs_pb2: Any = importlib.import_module("ray.core.generated.gcs_pb2")
    alive = gcs_pb2.GcsNodeInfo.GcsNodeState.Value("ALIVE")
    try:
        infos = gcs.get_all_node_info(timeout=QUERY_TIMEOUT_S)
    except Exception as exc:  # ray.exceptions.RpcError
        raise ImpactUnavailable(f"nodes unknown: {exc}") from exc
    return tuple(
        Raylet(
            node_id=bytes(info.node_id).hex(),
            address=f"{info.node_manager_address}:{info.node_manager_port}",
        )
        for info in infos.values()
        if info.state == alive
    )


def _task_summary(task: Any, now_ms: float) -> TaskSummary:
    started_ms = task.start_time_ms or now_ms
    kind = _TASK_KINDS.get(str(task.type), TASK)
    attempt = int(task.attempt_number or 0)
    return TaskSummary(
        task_id=str(task.task_id),
        name=str(task.name or task.func_or_class_name or ""),
        attempt=attempt,
        running_s=max(0.0, (now_ms - started_ms) / 1000),
        kind=kind,
        retries_left=retries_left(kind, attempt),
    )


def _actor_summary(actor: Any, owner_here: bool) -> ActorSummary:
    class_name = str(actor.class_name)
    return ActorSummary(
        actor_id=bytes(actor.actor_id).hex(),
        class_name=class_name,
        name=str(actor.name),
        max_restarts=int(actor.max_restarts),
        num_restarts=int(actor.num_restarts),
        detached=bool(actor.is_detached),
        num_restarts_due_to_preemption=int(actor.num_restarts_due_to_node_preemption),
        owner_here=owner_here,
        library=library_of(class_name),
    )


def library_of(class_name: str) -> str:
    """The Ray library that replaces an actor of this class by itself, or ""."""
    if class_name.startswith(SERVE_REPLICA_PREFIX):
        return "Ray Serve"
    return SELF_HEALING_CLASSES.get(class_name, "")


@dataclass(frozen=True)
class _NodeFindings:
    """What the queries found for one node, per job id."""

    tasks: dict[str, list[TaskSummary]]
    actors: dict[str, list[ActorSummary]]
    owned_actors: dict[str, list[ActorSummary]]
    objects: dict[str, list[StoredObject]]
    placement_groups: dict[str, list[PlacementGroupOnNode]]
    drivers: set[str]
    objects_unknown: str


def _per_job(found: _NodeFindings, preempted: bool) -> tuple[JobImpact, ...]:
    impacts = []
    job_ids = (
        set(found.tasks)
        | set(found.actors)
        | set(found.owned_actors)
        | set(found.objects)
        | set(found.placement_groups)
        | found.drivers
    )
    for job_id in sorted(job_ids):
        job_tasks = [
            replace(task, retries_left=retries_left(task.kind, task.attempt, preempted))
            for task in found.tasks.get(job_id, [])
        ]
        job_actors = found.actors.get(job_id, [])
        job_objects = found.objects.get(job_id, [])
        judgement = judge(
            JobOnNode(
                tasks=job_tasks,
                actors=job_actors,
                objects=job_objects,
                owned_actors=found.owned_actors.get(job_id, []),
                placement_groups=found.placement_groups.get(job_id, []),
                driver_here=job_id in found.drivers,
                objects_unknown=found.objects_unknown,
            ),
            preempted,
        )
        impacts.append(
            JobImpact(
                job_id=job_id,
                tasks_running=len(job_tasks),
                tasks=tuple(job_tasks[:MAX_LISTED_ITEMS]),
                actors_alive=len(job_actors),
                actors=tuple(job_actors[:MAX_LISTED_ITEMS]),
                verdict=judgement.verdict,
                reasons=judgement.reasons,
                objects=objects_summary(job_objects),
                compute_redone_s=judgement.compute_redone_s,
            )
        )
    return tuple(impacts)
