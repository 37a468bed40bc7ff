"""A job preempted five times in a row survives with the responder and fails under Ray alone.

Must-show 2 of issue 9, on a real local Ray cluster. Two lanes run side by side, each with
one worker at a time and a job of this process on it: an actor with max_restarts=1 and, at
each preemption, a task with max_retries=1 running (a job's stream of tasks: each is caught by
one preemption, retried on the replacement, and finishes there). Everything asks for the
lane's own resource, so the job can only follow the lane from one worker to its replacement.
Five times, the worker each lane's job runs on is killed the way EC2 takes a spot instance;
in the responder's lane the spot warning was answered by `python -m ray_hooks respond` first,
in the other lane nobody answered it. A replacement worker joins each lane during the warning
window, as the autoscaler would launch one.

Why not one task through all five kills: with SIGKILL the task's owner sees the worker's
connection drop at once, asks the dead raylet for the failure cause, and decides on the retry
before the GCS has recorded the death (NormalTaskSubmitter::HandleGetWorkerFailureCause ->
NODE_DIED); the retry is then charged although the GCS books the node as preempted a few
seconds later. Measured on Ray 2.60: the first retry of such a task was charged, the second
kill failed it. The actor's restarts are decided by the GCS itself, after the death is booked.

Judged by Ray alone: the death reason of every killed node, the task's result and attempts,
the actor's state and restarts in the GCS actor table.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest

from tests.scenarios.cluster import Death, PreemptibleCluster, Worker, death_of
from tests.scenarios.responder import Background, respond, warning
from tests.scenarios.workload import (
    ActorOutcome,
    Survivor,
    TaskOutcome,
    actor_outcomes,
    gate_on_head,
    hold,
    task_outcomes,
)

pytestmark = pytest.mark.ray

PREEMPTIONS = 5
WINDOW_S = 9.0


@dataclass
class Lane:
    name: str
    answered: bool
    worker: Worker | None = None
    tasks: list[Any] = field(default_factory=list)
    actor: Any = None
    deaths: list[Death] = field(default_factory=list)
    failed: bool = False
    why: str = ""
    task_outcomes: list[TaskOutcome] = field(default_factory=list)
    actor_outcome: ActorOutcome | None = None

    @property
    def resource(self) -> str:
        return f"lane-{self.name}"


def add_lane_worker(cluster: PreemptibleCluster, lane: Lane) -> Worker:
    worker = cluster.add_worker(resources={lane.resource: 10})
    return worker


def next_task(gate: Any, lane: Lane) -> None:
    """The job's next task: max_retries=1, running until its gate opens."""
    import ray

    name = f"job-{lane.name}-{len(lane.tasks) + 1}"
    lane.tasks.append(
        ray.remote(hold)
        .options(num_cpus=0, resources={lane.resource: 1}, max_retries=1, name=name)
        .remote(gate, name)
    )


def start_job(lane: Lane) -> None:
    import ray

    lane.actor = (
        ray.remote(Survivor)
        .options(num_cpus=0, resources={lane.resource: 0.01}, max_restarts=1)
        .remote()
    )


def job_gone(lane: Lane, gate: Any, timeout_s: float = 90) -> str:
    """Until the lane's newest task runs and the actor answers on the lane's current worker;
    why not, when the job is gone (the task failed or the actor is dead)."""
    import ray
    from ray._private.state import actors

    assert lane.worker is not None
    deadline = time.monotonic() + timeout_s
    name = f"job-{lane.name}-{len(lane.tasks)}"
    while ray.get(gate.count_of.remote(name)) < 1:
        ready, _ = ray.wait([lane.tasks[-1]], timeout=0)
        if ready:
            return f"task {name} ended before it ran"
        if time.monotonic() > deadline:
            return f"task {name} never started"
        time.sleep(0.3)
    while time.monotonic() < deadline:
        try:
            where = ray.get(lane.actor.node.remote(), timeout=10)
        except ray.exceptions.GetTimeoutError:
            continue  # a slow machine: ask again until the deadline
        except ray.exceptions.ActorDiedError as exc:
            # a call in flight at the kill fails so even when Ray restarts the actor: dead
            # is what the GCS's actor table says
            if actors(lane.actor._actor_id.hex()).get("State") == "DEAD":
                return f"the actor died: {str(exc)[:200]}"
            time.sleep(0.5)
            continue
        except ray.exceptions.RayActorError:
            time.sleep(0.5)  # restarting, or the caller does not know of the restart yet
            continue
        if where == lane.worker.node_id:
            return ""
        return f"the actor lives on {where}, not on the lane's worker {lane.worker.node_id}"
    return "the actor never answered"


def answer(address: str, lanes: list[Lane], termination_s: float, request_id: str) -> Any:
    """The spot warnings of `lanes`' workers answered by the responder (none: nothing sent)."""
    if not lanes:
        return None
    return respond(
        address,
        *(warning(worker_of(lane).instance_id, termination_s) for lane in lanes),
        request_id=request_id,
    )


def worker_of(lane: Lane) -> Worker:
    assert lane.worker is not None
    return lane.worker


@pytest.fixture(scope="module")
def lanes() -> Iterator[dict[str, Lane]]:
    import ray

    lanes = {"responder": Lane("responder", answered=True), "alone": Lane("alone", False)}
    with PreemptibleCluster() as cluster:
        for lane in lanes.values():
            lane.worker = add_lane_worker(cluster, lane)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        cluster.wait_for_workers()
        gate = gate_on_head(cluster.head_node_id)
        for lane in lanes.values():
            start_job(lane)
        for preemption in range(1, PREEMPTIONS + 1):
            going = [lane for lane in lanes.values() if not lane.failed]
            for lane in going:
                if preemption > 1:  # the last preemption's task finishes on the replacement
                    ray.get(gate.open.remote(f"job-{lane.name}-{len(lane.tasks)}"))
                next_task(gate, lane)
                lane.why = job_gone(lane, gate)
                lane.failed = bool(lane.why)
            going = [lane for lane in going if not lane.failed]
            if not going:
                break
            # GIVEN the job running on its lane's worker; WHEN the spot warning comes
            termination_s = time.time() + WINDOW_S
            answered = [lane for lane in going if lane.answered]
            reply = Background(
                partial(
                    answer, cluster.address, answered, termination_s, f"preemption-{preemption}"
                )
            )
            # AND a replacement worker joins the lane meanwhile
            replacements = {lane.name: add_lane_worker(cluster, lane) for lane in going}
            reply.result()
            time.sleep(max(0.0, termination_s - time.time()))
            # AND the worker is killed at its termination time
            doomed = {lane.name: lane.worker for lane in going}
            for lane in going:
                cluster.kill(doomed[lane.name])
            for lane in going:
                lane.deaths.append(death_of(doomed[lane.name].node_id))
                lane.worker = replacements[lane.name]
        ray.get(gate.open.remote())
        for lane in lanes.values():
            lane.task_outcomes = list(
                task_outcomes(cluster.address, dict(enumerate(lane.tasks))).values()
            )
            lane.actor_outcome = actor_outcomes(cluster.address, {0: lane.actor})[0]
        yield lanes


def test_with_the_responder_the_job_survives_five_preemptions_of_its_node(
    lanes: dict[str, Lane],
) -> None:
    lane = lanes["responder"]
    # THEN every kill was booked as a preemption
    assert not lane.failed, lane.why
    assert [death.reason for death in lane.deaths] == ["AUTOSCALER_DRAIN_PREEMPTED"] * 5, (
        lane.deaths
    )
    # AND each max_retries=1 task caught by a preemption was retried once and finished
    assert len(lane.task_outcomes) == PREEMPTIONS
    assert all(task.succeeded and task.attempts == 2 for task in lane.task_outcomes), (
        lane.task_outcomes
    )
    # AND the max_restarts=1 actor lives, its five restarts all charged to the preemptions
    actor = lane.actor_outcome
    assert actor is not None
    assert (actor.state, actor.answers) == ("ALIVE", True), actor
    assert actor.num_restarts == actor.num_restarts_due_to_node_preemption == PREEMPTIONS, actor


def test_under_ray_alone_the_same_job_fails_by_the_second_kill(lanes: dict[str, Lane]) -> None:
    lane = lanes["alone"]
    assert lane.deaths, "the lane's node was never killed"
    assert all(death.reason == "UNEXPECTED_TERMINATION" for death in lane.deaths), lane.deaths
    assert len(lane.deaths) <= 2, f"the job outlived {len(lane.deaths)} kills"
    # THEN the max_restarts=1 actor spent its restart on the first kill and died with the second
    assert lane.actor_outcome is not None
    assert lane.actor_outcome.state == "DEAD", lane.actor_outcome
    assert lane.actor_outcome.num_restarts_due_to_node_preemption == 0
    assert lane.failed
    assert "actor died" in lane.why, lane.why
