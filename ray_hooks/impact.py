"""What the interruption of a node costs, per Ray job: the work running and living there.

One function per kind of thing on a node, each answering `{node_id: {job_id: [items]}}` for
the nodes asked about, in one bounded query to Ray; `node_impacts` puts the kinds together
into one JobImpact per job. To record another kind of thing (objects, say), add a function
shaped like these and a field to JobImpact.

- running tasks: Ray's state API (task events, source-filtered to RUNNING, limited, timed).
- alive actors: the GCS actor table (source-filtered to ALIVE), which, unlike the state
  API, has `max_restarts` - what decides whether Ray brings the actor back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Collection
from typing import Any, TypeVar

from ray_hooks.contract import MAX_LISTED_ITEMS, ActorSummary, JobImpact, TaskSummary

log = logging.getLogger(__name__)

#: Upper bound of the tasks fetched in one query; beyond it, counts are lower bounds.
TASK_QUERY_LIMIT = 10_000
QUERY_TIMEOUT_S = 5

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
    tasks = running_tasks(address, node_ids)
    actors = alive_actors(gcs, node_ids)
    return {
        node_id: _per_job(tasks.get(node_id, {}), actors.get(node_id, {})) for node_id in node_ids
    }


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


async def _alive_actor_table(gcs: Any) -> Any:
    return await asyncio.wait_for(
        gcs.async_get_all_actor_info(actor_state_name="ALIVE", timeout=QUERY_TIMEOUT_S),
        QUERY_TIMEOUT_S + 1,
    )


def _task_summary(task: Any, now_ms: float) -> TaskSummary:
    started_ms = task.start_time_ms or now_ms
    return TaskSummary(
        task_id=str(task.task_id),
        name=str(task.name or task.func_or_class_name or ""),
        attempt=int(task.attempt_number or 0),
        running_s=max(0.0, (now_ms - started_ms) / 1000),
    )


def _actor_summary(actor: Any) -> ActorSummary:
    return ActorSummary(
        actor_id=bytes(actor.actor_id).hex(),
        class_name=str(actor.class_name),
        name=str(actor.name),
        max_restarts=int(actor.max_restarts),
        num_restarts=int(actor.num_restarts),
        detached=bool(actor.is_detached),
    )


def _per_job(
    tasks: dict[str, list[TaskSummary]], actors: dict[str, list[ActorSummary]]
) -> tuple[JobImpact, ...]:
    return tuple(
        JobImpact(
            job_id=job_id,
            tasks_running=len(tasks.get(job_id, [])),
            tasks=tuple(tasks.get(job_id, [])[:MAX_LISTED_ITEMS]),
            actors_alive=len(actors.get(job_id, [])),
            actors=tuple(actors.get(job_id, [])[:MAX_LISTED_ITEMS]),
        )
        for job_id in sorted(set(tasks) | set(actors))
    )
