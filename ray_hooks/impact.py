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

import asyncio
import importlib
import logging
import time
from collections import defaultdict
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ray_hooks import compat
from ray_hooks.contract import MAX_LISTED_ITEMS, ActorSummary, JobImpact, TaskSummary
from ray_hooks.objects import Raylet, objects_on_nodes
from ray_hooks.verdict import (
    ACTOR_CALL,
    ACTOR_CREATION,
    TASK,
    StoredObject,
    judge,
    objects_summary,
    retries_left,
)

log = logging.getLogger(__name__)

#: Upper bound of the tasks fetched in one query; beyond it, counts are lower bounds.
TASK_QUERY_LIMIT = 10_000
QUERY_TIMEOUT_S = 5

_TASK_KINDS = {"ACTOR_TASK": ACTOR_CALL, "ACTOR_CREATION_TASK": ACTOR_CREATION}

Item = TypeVar("Item")
ByNodeAndJob = dict[str, dict[str, list[Item]]]


class ImpactUnavailable(RuntimeError):
    """Ray could not say what runs on the node (dashboard down, timeout)."""


def node_impacts(
    address: str, gcs: Any, node_ids: Collection[str]
) -> dict[str, tuple[JobImpact, ...]]:
    """For each node: one JobImpact per Ray job with work on it, jobs in id order."""
    if not node_ids:
        return {}
    support = compat.probe()
    if compat.IMPACT in support.degraded:
        raise ImpactUnavailable(support.degraded[compat.IMPACT])
    raylets = alive_raylets(gcs)
    objects_gap = support.degraded.get(compat.OBJECTS)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="impact") as pool:
        tasks_query = pool.submit(running_tasks, address, node_ids)
        objects_query = pool.submit(
            _no_objects if objects_gap else objects_on_nodes, raylets, node_ids
        )
        actors = alive_actors(gcs, node_ids)
        tasks = tasks_query.result()
        try:
            objects, objects_unknown = objects_query.result(), ""
        except Exception as exc:  # ObjectsUnavailable, grpc errors: the rest still stands
            log.warning("objects on the node unknown: %s", exc)
            objects, objects_unknown = {}, " ".join(str(exc).split())[:200]
        if objects_gap:
            objects_unknown = objects_gap[:200]
    return {
        node_id: _per_job(
            tasks.get(node_id, {}),
            actors.get(node_id, {}),
            objects.get(node_id, {}),
            objects_unknown,
        )
        for node_id in node_ids
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


def alive_actors(gcs: Any, node_ids: Collection[str]) -> ByNodeAndJob[ActorSummary]:
    """Actors ALIVE on the nodes, by class and name."""
    try:
        actors = asyncio.run(_alive_actor_table(gcs))
    except Exception as exc:  # ray.exceptions.RpcError, TimeoutError
        raise ImpactUnavailable(f"alive actors unknown: {exc}") from exc
    found: ByNodeAndJob[ActorSummary] = defaultdict(lambda: defaultdict(list))
    for actor in actors.values():
        node_id = bytes(actor.node_id).hex()
        if node_id in node_ids:
            found[node_id][bytes(actor.job_id).hex()].append(_actor_summary(actor))
    for jobs in found.values():
        for summaries in jobs.values():
            summaries.sort(key=lambda summary: (summary.class_name, summary.name, summary.actor_id))
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


async def _alive_actor_table(gcs: Any) -> Any:
    return await asyncio.wait_for(
        gcs.async_get_all_actor_info(actor_state_name="ALIVE", timeout=QUERY_TIMEOUT_S),
        QUERY_TIMEOUT_S + 1,
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


def _actor_summary(actor: Any) -> ActorSummary:
    return ActorSummary(
        actor_id=bytes(actor.actor_id).hex(),
        class_name=str(actor.class_name),
        name=str(actor.name),
        max_restarts=int(actor.max_restarts),
        num_restarts=int(actor.num_restarts),
        detached=bool(actor.is_detached),
        num_restarts_due_to_preemption=int(actor.num_restarts_due_to_node_preemption),
    )


def _per_job(
    tasks: dict[str, list[TaskSummary]],
    actors: dict[str, list[ActorSummary]],
    objects: dict[str, list[StoredObject]],
    objects_unknown: str,
) -> tuple[JobImpact, ...]:
    impacts = []
    for job_id in sorted(set(tasks) | set(actors) | set(objects)):
        job_tasks, job_actors = tasks.get(job_id, []), actors.get(job_id, [])
        job_objects = objects.get(job_id, [])
        judgement = judge(job_tasks, job_actors, job_objects, objects_unknown)
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
