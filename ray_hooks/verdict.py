"""Will Ray recover a job's work when its node goes? One verdict per job, with the reasons.

Pure logic over what `ray_hooks.impact` found on and around the node; it imports nothing
from Ray. Three verdicts, the worst reason deciding:

- `lost`: something the job has will not come back, whatever Ray does;
- `at-risk`: it comes back only under a condition Ray does not publish (an actor's
  `max_task_retries`, whether an owner's retry recreates what it owned);
- `will-recover`: Ray (or the Ray library that runs it) brings everything back.

The rules, as Ray 2.60 applies them when a node dies (read in its source; see
tests/contract/README.md). `preempted` says whether the node will die as a preempted node -
drained with reason PREEMPTION and a deadline before its death, which is what the responder's
drain makes sure of (GcsNodeManager::InferDeathInfo books it AUTOSCALER_DRAIN_PREEMPTED):

- The job's driver on the node: the job ends with it (`lost`).
- An actor on the node: restarted elsewhere unless `max_restarts=0` (`lost`); after a
  preemption the restart does not count (`num_restarts_due_to_node_preemption`), otherwise it
  does and an exhausted budget is `lost`. Its in-memory state is lost either way. An actor
  whose owner (the process that created it) lives on the node is destroyed with its owner
  whatever its `max_restarts`, unless detached (`at-risk`: it returns only if the owner's
  retry creates it again). Ray Serve replicas, Ray Train workers and Ray Data's actor-pool
  workers are replaced by their library (`will-recover`).
- A running task: retried elsewhere, for free after a preemption, unless it was submitted
  with `max_retries=0`. Ray publishes a running task's attempt number but not its
  `max_retries` (only the owner's TaskSpec holds it), so the reason says so. Without a
  preemption, Ray's default `max_retries` (3) is assumed. An actor call fails unless the
  actor set `max_task_retries` (default 0; not published): `at-risk`.
- An object: a `ray.put` object whose only copy is on the node cannot be rebuilt (`lost`); an
  object whose owner lives on the node dies with its owner even where copies survive, and
  every holder elsewhere gets OwnerDiedError (`lost`); a task return whose only copy is there
  is rebuilt from lineage by re-running the task (`will-recover`, unless `max_retries=0`);
  an actor call's return only if the actor allows retries (`at-risk`).
- A placement group with bundles on the node: Ray reschedules those bundles elsewhere (the
  group is RESCHEDULING, then CREATED again) and what runs in them waits until they fit -
  the responder's replacement is what makes them fit soon (`will-recover`, naming the group
  and how many bundles; its tasks and actors are judged by the rules above).

`compute_redone_s` is the running time of the tasks that Ray will run again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from ray_hooks.contract import (
    AT_RISK,
    LOST,
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

_SEVERITY = {WILL_RECOVER: 0, AT_RISK: 1, LOST: 2}
_UNPUBLISHED = "Ray does not publish a task's max_retries"


@dataclass(frozen=True)
class StoredObject:
    """One object with a copy on the node, or owned by a process there, as found."""

    object_id: str
    job_id: str
    size: int
    #: PUT, TASK_RETURN or ACTOR_CALL_RETURN
    kind: str
    #: No copy survives elsewhere (no other node, not spilled off the node).
    only_copy_here: bool
    #: Its owner (the process that can rebuild or serve it) lives on the node.
    owner_here: bool
    #: A process on another node holds a reference to it (it will ask for it).
    held_elsewhere: bool = False

    @property
    def lost(self) -> bool:
        return self.only_copy_here or self.owner_here


@dataclass(frozen=True)
class PlacementGroupOnNode:
    """A placement group with bundles on the node."""

    placement_group_id: str
    name: str
    strategy: str
    bundles_here: int
    bundles: int


@dataclass(frozen=True)
class JobOnNode:
    """Everything of one job that the node's death touches."""

    tasks: Sequence[TaskSummary] = ()
    actors: Sequence[ActorSummary] = ()
    objects: Sequence[StoredObject] = ()
    #: Actors elsewhere that a process on the node owns (not detached): destroyed with it.
    owned_actors: Sequence[ActorSummary] = ()
    placement_groups: Sequence[PlacementGroupOnNode] = ()
    driver_here: bool = False
    #: Why the objects could not be checked ("" when they were).
    objects_unknown: str = ""


@dataclass(frozen=True)
class Judgement:
    verdict: str
    reasons: tuple[str, ...]
    compute_redone_s: float


Reason = tuple[str, str]  # (text, verdict it implies)


def retries_left(kind: str, attempt: int, preempted: bool = True) -> bool:
    """Whether Ray retries a running task of this kind when its node dies.

    After a preemption a task's retry is free (unless max_retries=0, which is not published);
    otherwise Ray's default retry limits are assumed."""
    if kind == TASK:
        return preempted or attempt < DEFAULT_TASK_MAX_RETRIES
    return attempt < DEFAULT_ACTOR_TASK_MAX_RETRIES


def objects_summary(objects: Sequence[StoredObject]) -> ObjectsSummary:
    return ObjectsSummary(
        count=len(objects),
        bytes=sum(max(0, item.size) for item in objects),
        lost_count=sum(item.lost for item in objects),
    )


def judge(job: JobOnNode, preempted: bool = True) -> Judgement:
    """The verdict for one job: the worst outcome of anything of it the node's death touches."""
    reasons: list[Reason] = []
    if job.driver_here:
        reasons.append(("the job's driver runs on the node: the job ends with it", LOST))
    reasons += [_actor_reason(actor, preempted) for actor in job.actors]
    reasons += [_owned_actor_reason(actor) for actor in job.owned_actors]
    reasons += _task_reasons(job.tasks, preempted)
    reasons += _object_reasons(job.objects)
    reasons += [_placement_group_reason(group) for group in job.placement_groups]
    if job.objects_unknown:
        reasons.append((f"objects on the node not checked: {job.objects_unknown}", AT_RISK))
    if not reasons:
        reasons.append(("nothing of this job on the node needs recovering", WILL_RECOVER))
    ordered = sorted(reasons, key=lambda reason: -_SEVERITY[reason[1]])
    return Judgement(
        verdict=ordered[0][1],
        reasons=_capped([text for text, _ in ordered]),
        compute_redone_s=sum(task.running_s for task in job.tasks if task.retries_left),
    )


# ---------------------------------------------------------------- actors


def _actor_reason(actor: ActorSummary, preempted: bool) -> Reason:
    who = _actor_name(actor)
    if actor.library:
        return (f"{who} is replaced by {actor.library} itself", WILL_RECOVER)
    if actor.owner_here and not actor.detached:
        return (
            f"{who} dies with its owner on the node, whatever its max_restarts; it comes "
            "back only if the owner's retry creates it again",
            AT_RISK,
        )
    if actor.max_restarts == 0:
        return (f"{who} has max_restarts=0: it dies with the node and is not restarted", LOST)
    if actor.max_restarts < 0:
        return (f"{who} restarts elsewhere (max_restarts=-1); its state is lost", WILL_RECOVER)
    used = actor.num_restarts - actor.num_restarts_due_to_preemption
    budget = f"max_restarts={actor.max_restarts}, {used} used"
    if preempted:
        return (
            f"{who} restarts elsewhere ({budget}; a restart after a preemption is free); "
            "its state is lost",
            WILL_RECOVER,
        )
    if used >= actor.max_restarts:
        return (f"{who} has no restart left ({budget}): it dies with the node", LOST)
    return (f"{who} restarts elsewhere ({budget}); its state is lost", WILL_RECOVER)


def _owned_actor_reason(actor: ActorSummary) -> Reason:
    return (
        f"{_actor_name(actor)} lives elsewhere but its owner is on the node: Ray destroys it "
        "with its owner, whatever its max_restarts",
        AT_RISK,
    )


def _actor_name(actor: ActorSummary) -> str:
    named = f' "{actor.name}"' if actor.name else ""
    detached = "detached " if actor.detached else ""
    return f"{detached}actor {actor.class_name}{named} ({actor.actor_id})"


# ---------------------------------------------------------------- tasks


def _task_reasons(tasks: Sequence[TaskSummary], preempted: bool) -> list[Reason]:
    groups: dict[tuple[str, str, bool], list[TaskSummary]] = defaultdict(list)
    for task in tasks:
        groups[(task.kind, task.name, task.retries_left)].append(task)
    return [
        _task_reason(kind, name, left, group, preempted)
        for (kind, name, left), group in groups.items()
    ]


def _task_reason(
    kind: str, name: str, left: bool, group: list[TaskSummary], preempted: bool
) -> Reason:
    what = _tasks_named(kind, name, group)
    attempt = max(task.attempt for task in group)
    if kind == ACTOR_CALL:
        verb = "fails" if len(group) == 1 else "fail"
        return (
            f"{what} {verb} with the node unless the actor set max_task_retries "
            f"(default {DEFAULT_ACTOR_TASK_MAX_RETRIES}; Ray does not publish it)",
            AT_RISK,
        )
    if kind == ACTOR_CREATION:
        return (f"{what} is lost unless the actor has max_restarts > 0 (default 0)", AT_RISK)
    if preempted:
        return (
            f"{what} retried elsewhere; a retry after a preemption is free (attempt "
            f"{attempt}), unless submitted with max_retries=0 ({_UNPUBLISHED})",
            WILL_RECOVER,
        )
    if left:
        return (
            f"{what} retried elsewhere: attempt {attempt} < Ray's default max_retries "
            f"{DEFAULT_TASK_MAX_RETRIES} ({_UNPUBLISHED}, so a task set to 0 fails instead)",
            WILL_RECOVER,
        )
    return (
        f"{what} on attempt {attempt}: no retry left under Ray's default max_retries "
        f"{DEFAULT_TASK_MAX_RETRIES} ({_UNPUBLISHED})",
        LOST,
    )


def _tasks_named(kind: str, name: str, group: list[TaskSummary]) -> str:
    noun = {ACTOR_CALL: "actor call", ACTOR_CREATION: "actor creation"}.get(kind, "task")
    ids = _ids([task.task_id[:16] for task in group])
    if len(group) == 1:
        return f'{noun} "{name}" ({ids})'
    return f'{len(group)} {noun}s "{name}" ({ids})'


# ---------------------------------------------------------------- objects


def _object_reasons(objects: Sequence[StoredObject]) -> list[Reason]:
    owner_gone = [item for item in objects if item.owner_here and item.held_elsewhere]
    unowned = [item for item in objects if item.only_copy_here and not item.owner_here]
    puts = [item for item in unowned if item.kind == PUT]
    call_returns = [item for item in unowned if item.kind == ACTOR_CALL_RETURN]
    returns = [item for item in unowned if item.kind == TASK_RETURN]
    kept = [item for item in objects if not item.lost]
    candidates: list[tuple[list[StoredObject], str, str]] = [
        (
            owner_gone,
            ": its owner lives on the node and dies with it; its holders on other nodes get "
            "OwnerDiedError, and it cannot be rebuilt",
            LOST,
        ),
        (puts, " (ray.put): only copy on the node; cannot be rebuilt", LOST),
        (
            call_returns,
            " (actor call return): only copy on the node; rebuilt only if the actor restarts "
            f"and set max_task_retries (default {DEFAULT_ACTOR_TASK_MAX_RETRIES})",
            AT_RISK,
        ),
        (
            returns,
            " (task return): only copy on the node; rebuilt from lineage by re-running the "
            f"task, unless it was submitted with max_retries=0 ({_UNPUBLISHED})",
            WILL_RECOVER,
        ),
        (kept, ": a copy survives on another node or in spill", WILL_RECOVER),
    ]
    return [(_objects(items) + text, verdict) for items, text, verdict in candidates if items]


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


# ---------------------------------------------------------------- placement groups


def _placement_group_reason(group: PlacementGroupOnNode) -> Reason:
    named = f' "{group.name}"' if group.name else ""
    strategy = f", {group.strategy}" if group.strategy else ""
    return (
        f"placement group{named} ({group.placement_group_id}{strategy}) has "
        f"{group.bundles_here} of {group.bundles} bundles on the node: Ray reschedules them "
        "elsewhere, and what runs in them waits until they fit again",
        WILL_RECOVER,
    )


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
