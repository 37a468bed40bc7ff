"""What a preempted node takes with it, job by job, and whether the responder's verdict said so.

One round on a real local Ray cluster: three spot workers, each with four jobs (each job its
own driver process, tests.scenarios.job, with one kind of work on the worker), and a spare
worker where retries and restarts go. The spot warnings are answered by `python -m ray_hooks
respond` in one request; each worker is killed the way EC2 takes a spot instance at the
termination time (its raylet, its workers and the driver that ran there, SIGKILLed). Each job
then says what came back. The outcome is Ray's (results, exceptions); the verdict, read from
the response, is checked against it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scenarios.cluster import PreemptibleCluster
from tests.scenarios.jobs import NAMESPACE, Job, Round, play, start_gate

pytestmark = pytest.mark.ray

WINDOW_S = 14.0

#: job name -> (its work, whether its driver runs on the node, what Ray does after a preemption)
JOBS: dict[str, tuple[dict[str, object], bool, str]] = {
    "task max_retries=0": ({"kind": "task", "max_retries": 0}, False, "lost"),
    "task max_retries=1": ({"kind": "task", "max_retries": 1}, False, "recovered"),
    "task default retries": ({"kind": "task", "max_retries": None}, False, "recovered"),
    "actor max_restarts=0": ({"kind": "actor", "max_restarts": 0}, False, "lost"),
    "actor max_restarts=1": ({"kind": "actor", "max_restarts": 1}, False, "recovered"),
    "actor max_restarts=-1": ({"kind": "actor", "max_restarts": -1}, False, "recovered"),
    "ray.put object made there": ({"kind": "put"}, False, "lost"),
    "return of a max_retries=0 task": ({"kind": "return", "max_retries": 0}, False, "lost"),
    "object owned there, stored elsewhere": ({"kind": "owned-object"}, False, "lost"),
    "actor owned there, living elsewhere": ({"kind": "owned-actor"}, False, "lost"),
    "placement group bundle there": ({"kind": "pg"}, False, "recovered"),
    "Serve replica there": ({"kind": "serve"}, False, "recovered"),
    "driver on the node": ({"kind": "task", "max_retries": None}, True, "lost"),
}
#: What the verdict cannot know: Ray 2.60 publishes no task's max_retries (only the task's
#: owner holds it), so neither a running max_retries=0 task nor the lineage limit of a
#: max_retries=0 task's return can be read.
UNSEEN = {"task max_retries=0", "return of a max_retries=0 task"}


@pytest.fixture(scope="module")
def played() -> Iterator[tuple[dict[str, Job], Round]]:
    import ray

    logs = Path(tempfile.mkdtemp(prefix="scenario-jobs-"))
    names = list(JOBS)
    with PreemptibleCluster() as cluster:
        spare = cluster.add_worker()
        doomed = [cluster.add_worker() for _ in range(3)]
        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
        cluster.wait_for_workers()
        gate = start_gate(cluster.head_node_id, "gate")  # keep the handle: it keeps the actor
        ray.get(gate.count.remote())
        jobs = {name: Job([JOBS[name][0]], driver_on_node=JOBS[name][1]) for name in names}
        plan = {
            worker.instance_id: [jobs[name] for name in names[index::3]]
            for index, worker in enumerate(doomed)
        }
        round_ = play(
            cluster, spare, plan, number=1, gate_name="gate", window_s=WINDOW_S, logs=logs
        )
        yield jobs, round_
    shutil.rmtree(logs, ignore_errors=True)


def test_every_warned_worker_is_booked_as_preempted(
    played: tuple[dict[str, Job], Round],
) -> None:
    _, round_ = played
    assert {death.reason for death in round_.deaths.values()} == {"AUTOSCALER_DRAIN_PREEMPTED"}


@pytest.mark.parametrize("name", list(JOBS))
def test_what_ray_brings_back_after_a_preemption(
    played: tuple[dict[str, Job], Round], name: str
) -> None:
    jobs, _ = played
    job = jobs[name]
    assert not job.setup_error, job.setup_error
    outcome = "lost" if job.lost else "recovered"
    assert outcome == JOBS[name][2], (name, job.outcomes)


@pytest.mark.parametrize("name", [name for name in JOBS if name not in UNSEEN])
def test_the_verdict_matches_what_ray_then_did(
    played: tuple[dict[str, Job], Round], name: str
) -> None:
    jobs, _ = played
    job = jobs[name]
    assert not job.setup_error, job.setup_error
    if job.lost:
        assert job.verdict in {"lost", "at-risk"}, (name, job.verdict, job.reasons)
    else:
        assert job.verdict == "will-recover", (name, job.verdict, job.reasons)


def test_a_serve_replica_is_named_as_healing_itself_and_the_app_answers_after_the_kill(
    played: tuple[dict[str, Job], Round],
) -> None:
    jobs, _ = played
    job = jobs["Serve replica there"]
    print(f"\nServe job: verdict {job.verdict}, reasons {job.reasons}, outcomes {job.outcomes}")
    assert job.verdict == "will-recover"
    assert any("Ray Serve" in reason for reason in job.reasons), job.reasons
    assert job.outcomes == [{"kind": "serve", "ok": True, "error": ""}]
