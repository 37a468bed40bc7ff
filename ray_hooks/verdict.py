"""Will Ray recover a job's work when its node goes? One verdict per job, with the reasons.

Pure logic over what `ray_hooks.impact` found on the node; it imports nothing from Ray.

What Ray does when a drained (preempted) node dies, and what this module concludes:

- An actor comes back elsewhere when its `max_restarts` is not 0: restarts caused by a
  preempted node do not count against `max_restarts` (Ray 2.60). It loses its in-memory
  state. An actor with `max_restarts=0` dies: `at-risk`.
- A running task is retried when retries are left. Ray 2.60 does not publish a running task's
  own `max_retries` (not in the state API, the GCS task events nor core-worker stats: only
  its owner holds it), so the judgement uses Ray's defaults and the attempt number Ray does
  publish: a task is retried while its attempt is below the default `max_retries` (3); an
  actor call is not retried (the default `max_task_retries` is 0). Every such reason says so.
- An object whose only copy is on the node, or whose owner lives there, is lost. A `ray.put`
  object cannot be rebuilt from lineage, nor can an object whose owner dies: `at-risk`. A
  task's return is rebuilt by re-running the task (if its retries allow); an actor call's
  return only if the actor's `max_task_retries` allows (default 0): `at-risk`.

`compute_redone_s` is the running time of the tasks that Ray will run again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from ray_hooks.contract import (
    AT_RISK,
    MAX_REASONS,
    WILL_RECOVER,
    ActorSummary,
    ObjectsSummary,
    TaskSummary,
)

#: Ray's defaults (ray._common.ray_option_utils): what a task gets unless its caller said.
DEFAULT_TASK_MAX_RETRIES = 3
DEFAULT_ACTOR_TASK_MAX_RETRIES = 0
#: How many ids one reason names before it says "+N more".
NAMED_PER_REASON = 3

TASK = "task"
ACTOR_CALL = "actor-call"
ACTOR_CREATION = "actor-creation"

PUT = "put"
TASK_RETURN = "task-return"
ACTOR_CALL_RETURN = "actor-call-return"

_UNPUBLISHED = "Ray 2.60 does not publish a task's own max_retries"


@dataclass(frozen=True)
class StoredObject:
    """One object with a copy on the node, as `ray_hooks.objects` found it."""

    object_id: str
    job_id: str
    size: int
    #: PUT, TASK_RETURN or ACTOR_CALL_RETURN
    kind: str
    #: No copy survives elsewhere (no other node, not spilled off the node).
    only_copy_here: bool
    #: Its owner (the process that can rebuild or serve it) lives on the node.
    owner_here: bool

    @property
    def lost(self) -> bool:
        return self.only_copy_here or self.owner_here


@dataclass(frozen=True)
class Judgement:
    verdict: str
    reasons: tuple[str, ...]
    compute_redone_s: float


def retries_left(kind: str, attempt: int) -> bool:
    """Whether Ray retries a running task of this kind, by Ray's default retry limits."""
    if kind == TASK:
        return attempt < DEFAULT_TASK_MAX_RETRIES
    return attempt < DEFAULT_ACTOR_TASK_MAX_RETRIES


def objects_summary(objects: Sequence[StoredObject]) -> ObjectsSummary:
    return ObjectsSummary(
        count=len(objects),
        bytes=sum(max(0, item.size) for item in objects),
        lost_count=sum(item.lost for item in objects),
    )


def judge(
    tasks: Sequence[TaskSummary],
    actors: Sequence[ActorSummary],
    objects: Sequence[StoredObject],
    objects_unknown: str = "",
) -> Judgement:
    """The verdict for one job: `at-risk` when anything of it will not come back."""
    at_risk: list[str] = []
    recovers: list[str] = []
    for reason, risky in [
        *_actor_reasons(actors),
        *_task_reasons(tasks),
        *_object_reasons(objects),
    ]:
        (at_risk if risky else recovers).append(reason)
    if objects_unknown:
        at_risk.append(f"objects on the node not checked: {objects_unknown}")
    if not at_risk and not recovers:
        recovers.append("nothing of this job on the node needs recovering")
    return Judgement(
        verdict=AT_RISK if at_risk else WILL_RECOVER,
        reasons=_capped([*at_risk, *recovers]),
        compute_redone_s=sum(task.running_s for task in tasks if task.retries_left),
    )


# ---------------------------------------------------------------- actors


def _actor_reasons(actors: Sequence[ActorSummary]) -> list[tuple[str, bool]]:
    return [(_actor_reason(actor), not actor.will_restart) for actor in actors]


def _actor_reason(actor: ActorSummary) -> str:
    who = _actor_name(actor)
    if not actor.will_restart:
        return f"{who} has max_restarts=0: it dies with the node and is not restarted"
    if actor.max_restarts < 0:
        budget = "max_restarts=-1"
    else:
        used = actor.num_restarts - actor.num_restarts_due_to_preemption
        budget = f"max_restarts={actor.max_restarts}, {used} used"
        if used >= actor.max_restarts:
            return (
                f"{who} restarts elsewhere only because restarts after a preemption are free "
                f"({budget}: the node must die after the drain deadline); its state is lost"
            )
    return f"{who} restarts elsewhere ({budget}; preemption restarts are free); state is lost"


def _actor_name(actor: ActorSummary) -> str:
    named = f' "{actor.name}"' if actor.name else ""
    detached = "detached " if actor.detached else ""
    return f"{detached}actor {actor.class_name}{named} ({actor.actor_id})"


# ---------------------------------------------------------------- tasks


def _task_reasons(tasks: Sequence[TaskSummary]) -> list[tuple[str, bool]]:
    groups: dict[tuple[str, str, bool], list[TaskSummary]] = defaultdict(list)
    for task in tasks:
        groups[(task.kind, task.name, task.retries_left)].append(task)
    return [
        (_task_reason(kind, name, left, group), not left)
        for (kind, name, left), group in groups.items()
    ]


def _task_reason(kind: str, name: str, left: bool, group: list[TaskSummary]) -> str:
    what = _tasks_named(kind, name, group)
    attempt = max(task.attempt for task in group)
    if kind == ACTOR_CALL:
        verb = "fails" if len(group) == 1 else "fail"
        return (
            f"{what} {verb} with the node unless the actor set max_task_retries "
            f"(default {DEFAULT_ACTOR_TASK_MAX_RETRIES}; Ray 2.60 does not publish it)"
        )
    if kind == ACTOR_CREATION:
        return f"{what} is lost unless the actor has max_restarts > 0 (default 0)"
    if left:
        return (
            f"{what} retried elsewhere: attempt {attempt} < Ray's default max_retries "
            f"{DEFAULT_TASK_MAX_RETRIES} ({_UNPUBLISHED}, so a task set to 0 fails instead)"
        )
    return (
        f"{what} on attempt {attempt}: no retry left under Ray's default max_retries "
        f"{DEFAULT_TASK_MAX_RETRIES} ({_UNPUBLISHED})"
    )


def _tasks_named(kind: str, name: str, group: list[TaskSummary]) -> str:
    noun = {ACTOR_CALL: "actor call", ACTOR_CREATION: "actor creation"}.get(kind, "task")
    ids = _ids([task.task_id[:16] for task in group])
    if len(group) == 1:
        return f'{noun} "{name}" ({ids})'
    return f'{len(group)} {noun}s "{name}" ({ids})'


# ---------------------------------------------------------------- objects


def _object_reasons(objects: Sequence[StoredObject]) -> list[tuple[str, bool]]:
    lost = [item for item in objects if item.lost]
    kept = [item for item in objects if not item.lost]
    puts = [item for item in lost if item.kind == PUT]
    owner_gone = [item for item in lost if item.kind != PUT and item.owner_here]
    call_returns = [item for item in lost if item.kind == ACTOR_CALL_RETURN and not item.owner_here]
    returns = [item for item in lost if item.kind == TASK_RETURN and not item.owner_here]
    reasons: list[tuple[str, bool]] = []
    if puts:
        where = _why_lost(puts)
        reasons.append((f"{_objects(puts)} (ray.put): {where}; cannot be rebuilt", True))
    if owner_gone:
        reasons.append(
            (
                f"{_objects(owner_gone)}: its owner lives on the node and dies with it; "
                "cannot be rebuilt",
                True,
            )
        )
    if call_returns:
        reasons.append(
            (
                f"{_objects(call_returns)} (actor call return): only copy on the node; rebuilt "
                "only if the actor restarts and set max_task_retries (default 0)",
                True,
            )
        )
    if returns:
        reasons.append(
            (
                f"{_objects(returns)} (task return): only copy on the node; rebuilt from "
                f"lineage by re-running the task, if its max_retries allows (default "
                f"{DEFAULT_TASK_MAX_RETRIES})",
                False,
            )
        )
    if kept:
        reasons.append((f"{_objects(kept)}: a copy survives on another node or in spill", False))
    return reasons


def _why_lost(items: list[StoredObject]) -> str:
    only_here = all(item.only_copy_here for item in items)
    owner_here = all(item.owner_here for item in items)
    if only_here and owner_here:
        return "only copy on the node, and its owner lives there"
    if only_here:
        return "only copy on the node"
    if owner_here:
        return "its owner lives on the node and dies with it"
    return "only copy on the node, or its owner lives there"


def _objects(items: list[StoredObject]) -> str:
    size = _size(sum(max(0, item.size) for item in items))
    ids = _ids([item.object_id for item in items])
    if len(items) == 1:
        return f"object {ids}, {size}"
    return f"{len(items)} objects ({ids}), {size}"


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


# ---------------------------------------------------------------- helpers


def _ids(ids: list[str]) -> str:
    named = ", ".join(ids[:NAMED_PER_REASON])
    more = len(ids) - NAMED_PER_REASON
    return f"{named}, +{more} more" if more > 0 else named


def _capped(reasons: list[str]) -> tuple[str, ...]:
    if len(reasons) <= MAX_REASONS:
        return tuple(reasons)
    kept = reasons[: MAX_REASONS - 1]
    return (*kept, f"+{len(reasons) - len(kept)} more reason(s)")
