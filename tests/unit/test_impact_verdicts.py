"""The verdict per job, the object kinds read from ids, and the response kept under SSM's limit."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from ray_hooks.contract import (
    AT_RISK,
    LOST,
    MAX_REASONS,
    WILL_RECOVER,
    ActorSummary,
    JobImpact,
    NodeSummary,
    NoticeResult,
    RespondResponse,
    TaskSummary,
    Timings,
)
from ray_hooks.objects import job_of, object_kind
from ray_hooks.output_limit import MAX_RESPONSE_CHARS, fit_response, size_of
from ray_hooks.verdict import (
    ACTOR_CALL,
    ACTOR_CALL_RETURN,
    PUT,
    TASK,
    TASK_RETURN,
    JobOnNode,
    PlacementGroupOnNode,
    StoredObject,
    judge,
    objects_summary,
    retries_left,
)

JOB = "01000000"
#: Ids as Ray 2.60 makes them (measured): a driver's ray.put, a task's return, an actor
#: call's return.
DRIVER_PUT = "00ffffffffffffffffffffffffffffffffffffff0100000001e1f505"
TASK_PUT = "00310a0f0a45af5cffffffffffffffffffffffff0100000002e1f505"
RETURN = "c2668a65bda616c1ffffffffffffffffffffffff0100000001000000"
ACTOR_RETURN = "f4402ec78d3a260732d944ea238596387063abbe0100000001000000"


def task(
    name: str = "step",
    attempt: int = 0,
    kind: str = TASK,
    running_s: float = 10.0,
    preempted: bool = True,
) -> Any:
    return TaskSummary(
        task_id=f"{name:x<16}"[:16] + "f" * 24 + JOB,
        name=name,
        attempt=attempt,
        running_s=running_s,
        kind=kind,
        retries_left=retries_left(kind, attempt, preempted),
    )


def actor(max_restarts: int, num_restarts: int = 0, preempted: int = 0, **kw: Any) -> Any:
    return ActorSummary(
        actor_id="7b7c6ff2aa1f4c5c9f7b3a2e01000000",
        class_name=kw.get("class_name", "Counter"),
        name=kw.get("name", "counter"),
        max_restarts=max_restarts,
        num_restarts=num_restarts,
        detached=kw.get("detached", False),
        num_restarts_due_to_preemption=preempted,
        owner_here=kw.get("owner_here", False),
        library=kw.get("library", ""),
    )


def stored(
    object_id: str,
    *,
    only_here: bool = True,
    owner_here: bool = False,
    held_elsewhere: bool = False,
) -> StoredObject:
    return StoredObject(
        object_id=object_id,
        job_id=job_of(object_id),
        size=2_000_000,
        kind=object_kind(object_id),
        only_copy_here=only_here,
        owner_here=owner_here,
        held_elsewhere=held_elsewhere,
    )


# ---------------------------------------------------------------- verdicts


def job(**parts: Any) -> JobOnNode:
    return JobOnNode(**parts)


def test_actor_with_max_restarts_zero_is_lost_and_named() -> None:
    judgement = judge(job(actors=[actor(0, name="ledger-writer", detached=True)]))

    assert judgement.verdict == LOST
    (reason,) = judgement.reasons
    assert 'detached actor Counter "ledger-writer" (7b7c6ff2aa1f4c5c9f7b3a2e01000000)' in reason
    assert "max_restarts=0" in reason


@pytest.mark.parametrize(
    ("max_restarts", "num_restarts", "preempted", "phrase"),
    [
        (-1, 5, 0, "max_restarts=-1"),
        (2, 1, 0, "max_restarts=2, 1 used"),
        (1, 3, 2, "max_restarts=1, 1 used"),  # preemption restarts do not count
        (2, 2, 0, "max_restarts=2, 2 used; a restart after a preemption is free"),
    ],
)
def test_restartable_actor_on_a_preempted_node_recovers_and_loses_its_state(
    max_restarts: int, num_restarts: int, preempted: int, phrase: str
) -> None:
    judgement = judge(job(actors=[actor(max_restarts, num_restarts, preempted)]))

    assert judgement.verdict == WILL_RECOVER
    assert phrase in judgement.reasons[0]
    assert "state is lost" in judgement.reasons[0]


def test_actor_with_its_restarts_used_up_is_lost_when_the_node_is_not_drained() -> None:
    judgement = judge(job(actors=[actor(2, num_restarts=2)]), preempted=False)

    assert judgement.verdict == LOST
    assert "no restart left (max_restarts=2, 2 used)" in judgement.reasons[0]


def test_actor_whose_owner_is_on_the_node_dies_with_it_whatever_its_max_restarts() -> None:
    judgement = judge(job(actors=[actor(-1, owner_here=True)]))

    assert judgement.verdict == AT_RISK
    assert "dies with its owner on the node, whatever its max_restarts" in judgement.reasons[0]


def test_actor_elsewhere_owned_by_a_process_on_the_node_is_at_risk() -> None:
    judgement = judge(job(owned_actors=[actor(-1, owner_here=True, name="cache")]))

    assert judgement.verdict == AT_RISK
    assert 'actor Counter "cache"' in judgement.reasons[0]
    assert "lives elsewhere but its owner is on the node" in judgement.reasons[0]


@pytest.mark.parametrize(
    ("class_name", "library"),
    [
        ("ServeReplica:app:Model", "Ray Serve"),
        ("RayTrainWorker", "Ray Train"),
        ("_MapWorker", "Ray Data"),
    ],
)
def test_library_actors_are_replaced_by_their_library(class_name: str, library: str) -> None:
    judgement = judge(job(actors=[actor(0, class_name=class_name, library=library)]))

    assert judgement.verdict == WILL_RECOVER
    assert judgement.reasons[0].endswith(f"is replaced by {library} itself")


def test_driver_on_the_node_loses_the_job_whatever_else_recovers() -> None:
    judgement = judge(job(driver_here=True, actors=[actor(-1)], tasks=[task()]))

    assert judgement.verdict == LOST
    assert judgement.reasons[0] == "the job's driver runs on the node: the job ends with it"


def test_tasks_on_a_preempted_node_are_retried_for_free_and_their_time_is_redone() -> None:
    judgement = judge(job(tasks=[task(running_s=12.5), task(attempt=5, running_s=7.5)]))

    assert judgement.verdict == WILL_RECOVER
    assert judgement.compute_redone_s == 20.0
    (reason,) = judgement.reasons
    assert reason.startswith('2 tasks "step" (stepxxxxxxxxxxxx, stepxxxxxxxxxxxx)')
    assert "a retry after a preemption is free" in reason
    assert "unless submitted with max_retries=0 (Ray does not publish" in reason


def test_task_on_its_last_default_attempt_is_lost_when_the_node_is_not_drained() -> None:
    judgement = judge(job(tasks=[task(attempt=3, running_s=30, preempted=False)]), False)

    assert judgement.verdict == LOST
    assert "attempt 3: no retry left" in judgement.reasons[0]
    assert judgement.compute_redone_s == 0


def test_running_actor_calls_are_at_risk_because_actor_calls_are_not_retried_by_default() -> None:
    calls = [task("Counter.add", kind=ACTOR_CALL) for _ in range(2000)]

    judgement = judge(job(tasks=calls, actors=[actor(-1)]))

    assert judgement.verdict == AT_RISK
    assert judgement.reasons[0].startswith('2000 actor calls "Counter.add"')
    assert "+1997 more" in judgement.reasons[0]
    assert "max_task_retries" in judgement.reasons[0]


def test_put_object_with_its_only_copy_on_the_node_is_lost_and_named() -> None:
    judgement = judge(job(tasks=[task()], objects=[stored(DRIVER_PUT)]))

    assert judgement.verdict == LOST
    assert judgement.reasons[0].startswith(f"object {DRIVER_PUT}, 2.0 MB (ray.put)")
    assert "cannot be rebuilt" in judgement.reasons[0]


def test_lost_task_return_is_rebuilt_from_lineage() -> None:
    judgement = judge(job(objects=[stored(RETURN)]))

    assert judgement.verdict == WILL_RECOVER
    assert "rebuilt from lineage" in judgement.reasons[0]


def test_object_owned_on_the_node_and_held_elsewhere_is_lost_even_with_a_copy_elsewhere() -> None:
    judgement = judge(
        job(objects=[stored(RETURN, only_here=False, owner_here=True, held_elsewhere=True)])
    )

    assert judgement.verdict == LOST
    assert "OwnerDiedError" in judgement.reasons[0]


def test_object_owned_on_the_node_that_nobody_else_holds_costs_nothing() -> None:
    judgement = judge(job(objects=[stored(TASK_PUT, only_here=True, owner_here=True)]))

    assert judgement.verdict == WILL_RECOVER


def test_placement_group_with_bundles_on_the_node_is_rescheduled_by_ray_and_named() -> None:
    group = PlacementGroupOnNode("a1b2c3", "trainers", "STRICT_SPREAD", 1, 4)

    judgement = judge(job(placement_groups=[group]))

    assert judgement.verdict == WILL_RECOVER
    assert judgement.reasons[0].startswith(
        'placement group "trainers" (a1b2c3, STRICT_SPREAD) has 1 of 4 bundles on the node'
    )


def test_the_worst_reason_comes_first_and_decides() -> None:
    judgement = judge(job(tasks=[task()], actors=[actor(0)], objects=[stored(ACTOR_RETURN)]))

    assert judgement.verdict == LOST
    assert "max_restarts=0" in judgement.reasons[0]
    assert "actor call return" in judgement.reasons[1]


def test_objects_with_a_copy_elsewhere_recover_and_are_counted() -> None:
    objects = [stored(DRIVER_PUT, only_here=False), stored(RETURN)]

    judgement = judge(job(objects=objects))
    summary = objects_summary(objects)

    assert judgement.verdict == WILL_RECOVER
    assert (summary.count, summary.bytes, summary.lost_count) == (2, 4_000_000, 1)


def test_objects_not_checked_make_the_job_at_risk_and_say_why() -> None:
    judgement = judge(job(tasks=[task()], objects_unknown="no raylet listed its objects"))

    assert judgement.verdict == AT_RISK
    assert judgement.reasons[0] == "objects on the node not checked: no raylet listed its objects"


def test_reasons_are_capped_and_say_how_many_more() -> None:
    tasks = [task(f"step{i}", attempt=3, preempted=False) for i in range(15)]

    judgement = judge(job(tasks=tasks), preempted=False)

    assert len(judgement.reasons) == MAX_REASONS
    assert judgement.reasons[-1] == "+6 more reason(s)"


# ---------------------------------------------------------------- object ids


@pytest.mark.parametrize(
    ("object_id", "kind"),
    [(DRIVER_PUT, PUT), (TASK_PUT, PUT), (RETURN, TASK_RETURN), (ACTOR_RETURN, ACTOR_CALL_RETURN)],
)
def test_object_kind_is_read_from_the_id(object_id: str, kind: str) -> None:
    assert object_kind(object_id) == kind
    assert job_of(object_id) == JOB


# ---------------------------------------------------------------- size


def big_response(notices: int, jobs: int, tasks: int) -> RespondResponse:
    def job(n: int) -> JobImpact:
        listed = tuple(task(f"preprocess_shard_{i:05d}", running_s=i) for i in range(tasks))
        judgement = judge(
            JobOnNode(
                tasks=listed,
                actors=[actor(0, name=f"a{i}") for i in range(3)],
                objects=[stored(DRIVER_PUT)] * 5,
            )
        )
        return JobImpact(
            job_id=f"{n:08x}",
            tasks_running=tasks,
            tasks=listed[:20],
            actors_alive=3,
            actors=tuple(actor(0, name=f"a{i}") for i in range(3)),
            verdict=judgement.verdict if n % 2 else WILL_RECOVER,
            reasons=judgement.reasons,
            objects=objects_summary([stored(DRIVER_PUT)] * 5),
            compute_redone_s=judgement.compute_redone_s,
        )

    return RespondResponse(
        cluster="ray-on-aws",
        request_id="req-big",
        ray_version="2.60.0",
        results=tuple(
            NoticeResult(
                notice_id=f"i-0a1b2c3d4e5f{n:05d}#spot-interruption",
                instance_id=f"i-0a1b2c3d4e5f{n:05d}",
                outcome="drained",
                message="drain accepted by GCS (reason PREEMPTION)",
                ray_node_id="eb" * 28,
                node=NodeSummary("10.0.1.11", "x86_spot_worker", "spot", "ALIVE"),
                drain_deadline=datetime(2026, 11, 22, 10, 1, 45, tzinfo=UTC),
                drain_issued_at=datetime(2026, 11, 22, 10, 0, 1, tzinfo=UTC),
                impacted_jobs=tuple(job(j) for j in range(jobs)),
            )
            for n in range(notices)
        ),
        timings=Timings(drain_s=0.02, total_s=1.5),
    )


@pytest.mark.parametrize(
    ("notices", "jobs", "tasks"), [(1, 5, 2000), (1, 200, 50), (10, 20, 500), (30, 10, 100)]
)
def test_response_with_many_jobs_and_tasks_fits_ssm_output_and_keeps_the_jobs_that_lose_work(
    notices: int, jobs: int, tasks: int
) -> None:
    document = big_response(notices, jobs, tasks).to_json()
    assert size_of(document) > MAX_RESPONSE_CHARS  # the case is big enough to need cutting

    started = time.perf_counter()
    fitted = fit_response(document)
    seconds = time.perf_counter() - started

    printed = json.dumps(fitted)
    assert len(printed) + 1 <= 24_000
    assert seconds < 2
    kept = [job for result in fitted["results"] for job in result["impacted_jobs"]]
    assert kept, "at least some job impact survives"
    for job in kept:
        assert job["verdict"] in {"lost", "will-recover"}
        assert job["reasons"], "every kept job keeps a reason"
        assert job["tasks_running"] == tasks
    for before, after in zip(document["results"], fitted["results"], strict=True):
        kept_ids = {job["job_id"] for job in after["impacted_jobs"]}
        dropped = [job for job in before["impacted_jobs"] if job["job_id"] not in kept_ids]
        if any(job["verdict"] == "lost" for job in dropped):  # will-recover ones go first
            assert all(job["verdict"] == "lost" for job in after["impacted_jobs"])
        if dropped:
            assert after["message"].endswith(
                f"; {len(dropped)} impacted job(s) left out to fit SSM's output limit"
            )


def test_response_that_fits_is_printed_unchanged() -> None:
    document = big_response(1, 2, 3).to_json()

    assert fit_response(document) is document
