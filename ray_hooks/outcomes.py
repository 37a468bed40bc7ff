"""What really happened to each judged job once its node was gone: the verdict checked.

`respond` keeps, for every notice with judged jobs, what it judged (per job: the verdict, the
tasks and actors it named) in the cluster's internal KV. `reconcile` (every few minutes,
and at once on the `terminated` state change) takes the records whose node Ray has booked
DEAD for at least SETTLE_S - time for Ray's retries and restarts to have happened - and reads
Ray's own state for each job:

- the job: still running, or finished (GCS job table, `is_dead`);
- each named actor: ALIVE/RESTARTING again (restarted elsewhere) or DEAD, with its restarts
  and how many of them Ray gave for free after a preemption;
- each named task: the attempts Ray made after the one that ran on the node, and whether
  its latest attempt failed (state API, one query per job);
- how Ray booked the node's death (AUTOSCALER_DRAIN_PREEMPTED or UNEXPECTED_TERMINATION).

From that, one outcome per job: `lost` (a named actor dead for good, a named task failed
on its last attempt, or the driver was on the node), `recovered` (everything named came
back or finished), or `running` (nothing decided yet: asked again next time, until the
record expires). The record is dropped once reported, or after EXPIRE_S.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ray_hooks import compat
from ray_hooks.cluster import KV_NAMESPACE
from ray_hooks.contract import LOST, JobImpact, NoticeResult, format_timestamp
from ray_hooks.nodes import DEAD, RayNode, list_nodes

log = logging.getLogger(__name__)

NAMESPACE = KV_NAMESPACE
PREFIX = b"verdict/"
#: Seconds after the node's death before its jobs' outcomes are read (tests shorten it).
SETTLE_S = float(os.environ.get("RAY_HOOKS_OUTCOME_SETTLE_S", "20"))
#: A record older than this is dropped, reported or not.
EXPIRE_S = 3600.0
_RPC_TIMEOUT_S = 5
_TASK_QUERY_LIMIT = 10_000

RECOVERED = "recovered"
RUNNING = "running"
_FAILED_TASK = "FAILED"
_ALIVE_ACTOR = frozenset({"ALIVE", "RESTARTING", "PENDING_CREATION", "DEPENDENCIES_UNREADY"})


@dataclass(frozen=True)
class JobOutcome:
    """A judged job, and what happened to it."""

    notice_id: str
    instance_id: str
    ray_node_id: str
    job_id: str
    verdict: str
    outcome: str
    node_death: str
    details: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "notice_id": self.notice_id,
            "instance_id": self.instance_id,
            "ray_node_id": self.ray_node_id,
            "job_id": self.job_id,
            "verdict": self.verdict,
            "outcome": self.outcome,
            "node_death": self.node_death,
            "details": list(self.details),
        }


def remember(gcs: Any, results: Sequence[NoticeResult], now: datetime | None = None) -> None:
    """Keep what was judged for each notice, so that reconcile can check it later."""
    now = now or datetime.now(UTC)
    for result in results:
        if not result.impacted_jobs or result.ray_node_id is None:
            continue
        record = {
            "notice_id": result.notice_id,
            "instance_id": result.instance_id,
            "ray_node_id": result.ray_node_id,
            "judged_at": format_timestamp(now),
            "jobs": [_judged(job) for job in result.impacted_jobs],
        }
        try:
            gcs.internal_kv_put(
                _key(result.notice_id),
                json.dumps(record).encode(),
                True,
                NAMESPACE,
                _RPC_TIMEOUT_S,
            )
        except Exception as exc:  # the response stands; only the later check is lost
            log.warning("verdicts of %s not kept for checking: %s", result.notice_id, exc)


def settle(gcs: Any, address: str, now: datetime | None = None) -> tuple[JobOutcome, ...]:
    """The outcomes of the judged jobs whose node is gone; reported records are dropped."""
    now = now or datetime.now(UTC)
    records = _records(gcs)
    if not records:
        return ()
    nodes = {node.node_id: node for node in list_nodes(gcs)}
    due = {key: record for key, record in records.items() if _is_due(record, nodes, now)}
    expired = [key for key, record in records.items() if _age(record, now) > EXPIRE_S]
    outcomes: list[JobOutcome] = []
    if due:
        world = _World.read(
            gcs, address, {job["job_id"] for r in due.values() for job in r["jobs"]}
        )
        for key, record in due.items():
            found = [
                _outcome(record, job, nodes[record["ray_node_id"]], world) for job in record["jobs"]
            ]
            outcomes += found
            if all(item.outcome != RUNNING for item in found):
                expired.append(key)
    for key in set(expired):
        _drop(gcs, key)
    return tuple(outcomes)


# ---------------------------------------------------------------- what Ray says now


@dataclass(frozen=True)
class _World:
    """Ray's state for the jobs being checked: actors by id, tasks by id, finished jobs."""

    actors: Mapping[str, Any]
    tasks: Mapping[str, list[Any]]
    finished_jobs: frozenset[str]

    @classmethod
    def read(cls, gcs: Any, address: str, job_ids: Iterable[str]) -> _World:
        job_ids = sorted(set(job_ids))
        actors = compat.actor_table(gcs, _RPC_TIMEOUT_S)
        jobs = gcs.get_all_job_info(
            skip_submission_job_info_field=True,
            skip_is_running_tasks_field=True,
            timeout=_RPC_TIMEOUT_S,
        )
        return cls(
            actors={bytes(actor.actor_id).hex(): actor for actor in actors.values()},
            tasks=_tasks(address, job_ids),
            finished_jobs=frozenset(
                bytes(job.job_id).hex() for job in jobs.values() if job.is_dead
            ),
        )


def _tasks(address: str, job_ids: Sequence[str]) -> dict[str, list[Any]]:
    from ray.util.state import list_tasks

    attempts: dict[str, list[Any]] = {}
    for job_id in job_ids:
        try:
            found = list_tasks(
                address=address,
                filters=[("job_id", "=", job_id)],
                limit=_TASK_QUERY_LIMIT,
                timeout=_RPC_TIMEOUT_S,
                raise_on_missing_output=False,
            )
        except Exception as exc:  # the state API is best effort here
            log.warning("tasks of job %s unknown: %s", job_id, exc)
            continue
        for task in found:
            attempts.setdefault(str(task.task_id), []).append(task)
    return attempts


# ---------------------------------------------------------------- judging the outcome


def _outcome(
    record: dict[str, Any], job: dict[str, Any], node: RayNode, world: _World
) -> JobOutcome:
    details: list[str] = []
    lost = False
    settled = True
    if job.get("driver_here"):
        lost = True
        details.append("the driver ran on the node")
    for actor_id in job.get("actors", []):
        actor = world.actors.get(actor_id)
        if actor is None:
            details.append(f"actor {actor_id}: not in Ray's actor table any more")
            continue
        state = _enum_name(actor, "state")
        restarts = int(actor.num_restarts)
        free = int(actor.num_restarts_due_to_node_preemption)
        details.append(f"actor {actor_id}: {state}, {restarts} restart(s), {free} free")
        lost = lost or (state == "DEAD" and not job.get("library_actors", {}).get(actor_id))
    for task in job.get("tasks", []):
        attempts = world.tasks.get(task["task_id"], [])
        later = [a for a in attempts if int(a.attempt_number or 0) > int(task["attempt"])]
        if not attempts:
            continue
        latest = max(attempts, key=lambda attempt: int(attempt.attempt_number or 0))
        state = str(latest.state)
        details.append(
            f"task {task['task_id'][:16]}: {len(later)} retry(ies), latest attempt {state}"
        )
        if state == _FAILED_TASK:
            lost = True
        elif state != "FINISHED":
            settled = False
    finished = job["job_id"] in world.finished_jobs
    if finished:
        details.append("the job has finished")
    outcome = LOST if lost else RECOVERED if (settled or finished) else RUNNING
    return JobOutcome(
        notice_id=record["notice_id"],
        instance_id=record["instance_id"],
        ray_node_id=record["ray_node_id"],
        job_id=job["job_id"],
        verdict=job["verdict"],
        outcome=outcome,
        node_death=node.death_reason,
        details=tuple(details[:10]),
    )


def _judged(job: JobImpact) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "verdict": job.verdict,
        "driver_here": any("driver runs on the node" in reason for reason in job.reasons),
        "tasks": [{"task_id": t.task_id, "attempt": t.attempt} for t in job.tasks],
        "actors": [actor.actor_id for actor in job.actors],
        "library_actors": {actor.actor_id: actor.library for actor in job.actors if actor.library},
    }


# ---------------------------------------------------------------- the KV


def _records(gcs: Any) -> dict[bytes, dict[str, Any]]:
    keys = gcs.internal_kv_keys(PREFIX, NAMESPACE, _RPC_TIMEOUT_S)
    if not keys:
        return {}
    values = gcs.internal_kv_multi_get(list(keys), NAMESPACE, _RPC_TIMEOUT_S)
    records = {}
    for key, value in values.items():
        try:
            records[key] = json.loads(value)
        except ValueError:
            _drop(gcs, key)
    return records


def _is_due(record: dict[str, Any], nodes: Mapping[str, RayNode], now: datetime) -> bool:
    node = nodes.get(record.get("ray_node_id", ""))
    if node is None or node.state != DEAD:
        return False
    died = node.end_time_ms / 1000 if node.end_time_ms else 0
    return now.timestamp() - died >= SETTLE_S


def _age(record: dict[str, Any], now: datetime) -> float:
    try:
        judged = datetime.fromisoformat(str(record["judged_at"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return EXPIRE_S + 1
    return (now - judged) / timedelta(seconds=1)


def _drop(gcs: Any, key: bytes) -> None:
    try:
        gcs.internal_kv_del(key, False, NAMESPACE, _RPC_TIMEOUT_S)
    except Exception as exc:  # dropped next time
        log.warning("verdict record %r not dropped: %s", key, exc)


def _key(notice_id: str) -> bytes:
    return PREFIX + re.sub(r"[^A-Za-z0-9_.#:-]", "_", notice_id).encode()


def _enum_name(message: Any, field: str) -> str:
    descriptor = message.DESCRIPTOR.fields_by_name[field]
    return str(descriptor.enum_type.values_by_number[getattr(message, field)].name)
