"""The verdict per job, on a real local Ray cluster: what Ray 2.60 itself reports, judged.

One cluster for the module (head + three spot workers). Each test puts work of this test's
Ray job on its own worker, waits until Ray reports it, and answers a spot warning for that
worker: through `python -m ray_hooks respond` (what the SSM document runs), or through
`spot-responder replay` and the ledger (what the Lambda does). Verdicts are per job and
node, so the tests do not see each other's work.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from spot_responder.cli.embedded import (
    ARM_SPOT_WORKER,
    INSTANCE_ID_LABEL,
    X86_SPOT_WORKER,
    EmbeddedNode,
    EmbeddedRayCluster,
)
from tests.ray_hooks_support import notice, request, run_ray_hooks
from tests.support import EVENTS, spot_responder

pytestmark = pytest.mark.ray

THIRD_WORKER = EmbeddedNode("i-0a1b2c3d4e5f60003", "x86_spot_worker", "spot")
#: Drained by an earlier test of the module (the tests run in file order).
DRAINED_BEFORE = (ARM_SPOT_WORKER,)


@pytest.fixture(scope="module")
def cluster(ray_cluster: EmbeddedRayCluster) -> EmbeddedRayCluster:
    """The shared cluster with a third worker, and this process connected as a driver."""
    import ray

    ray_cluster.add_worker(THIRD_WORKER)
    ray.init(address=ray_cluster.address, log_to_driver=False, logging_level="WARNING")
    return ray_cluster  # the embedded cluster disconnects the driver when it shuts down


@pytest.fixture(scope="module")
def job_id(cluster: EmbeddedRayCluster) -> str:
    import ray

    return str(ray.get_runtime_context().get_job_id())


class Keeper:
    """An actor that keeps what it is given, and can `ray.put` a large object and keep it."""

    def __init__(self) -> None:
        self.kept: list[Any] = []

    def ready(self) -> bool:
        return True

    def put_large(self, size: int) -> list[Any]:
        import ray

        ref = ray.put(b"x" * size)
        self.kept.append(ref)
        return [ref]  # in a list: the caller borrows the reference, the actor owns it


def crunch(seconds: float) -> str:
    """A task that works (sleeps) for a while."""
    import ray

    time.sleep(seconds)
    return str(ray.get_runtime_context().get_node_id())


def on_node(remote: Any, instance_id: str, **options: Any) -> Any:
    return remote.options(label_selector={INSTANCE_ID_LABEL: instance_id}, **options)


def keeper_on(instance_id: str, name: str, max_restarts: int) -> Any:
    import ray

    remote = ray.remote(num_cpus=0, max_restarts=max_restarts)(Keeper)
    keeper = on_node(remote, instance_id, name=name).remote()
    assert ray.get(keeper.ready.remote(), timeout=60)
    return keeper


def wait_until_running(cluster: EmbeddedRayCluster, name: str, count: int) -> None:
    """Ray's task events reach the GCS about once a second: until they say RUNNING."""
    from ray.util.state import list_tasks

    deadline = time.monotonic() + 30
    filters: list[Any] = [("name", "=", name), ("state", "=", "RUNNING")]
    while len(list_tasks(address=cluster.address, filters=filters)) < count:
        assert time.monotonic() < deadline, f"{count} task(s) {name} never ran"
        time.sleep(0.2)


def impact_of(cluster: EmbeddedRayCluster, instance_id: str, job_id: str) -> dict[str, Any]:
    run = run_ray_hooks(
        "respond", "--address", cluster.address, stdin=json.dumps(request(notice(instance_id)))
    )
    assert run.code == 0, run.stderr
    assert len(run.stdout) < 24_000
    (result,) = run.document["results"]
    assert result["outcome"] == "drained", result["message"]
    jobs = {job["job_id"]: job for job in result["impacted_jobs"]}
    assert job_id in jobs, f"job {job_id} not among {list(jobs)}: {result['message']}"
    return jobs[job_id]


def test_job_with_an_actor_that_has_max_restarts_zero_on_the_node_is_lost(
    cluster: EmbeddedRayCluster, job_id: str
) -> None:
    import ray

    # GIVEN an actor with max_restarts=0 living on the arm worker
    keeper = keeper_on(ARM_SPOT_WORKER.instance_id, "arm-keeper", max_restarts=0)
    actor_id = keeper._actor_id.hex()

    # WHEN the spot warning for that worker is answered
    job = impact_of(cluster, ARM_SPOT_WORKER.instance_id, job_id)

    # THEN the job is lost, and the reason names the actor
    assert job["verdict"] == "lost"
    # (first, and for its max_restarts=0, unless this test's own driver, the actor's owner,
    # runs there: Ray 2.50 may attach a driver to any raylet of its IP, and every node of
    # this cluster has the same; then the actor goes with its owner)
    if ray.get_runtime_context().get_node_id() == cluster.node_id_for(ARM_SPOT_WORKER.instance_id):
        assert any(f'actor Keeper "arm-keeper" ({actor_id})' in r for r in job["reasons"])
    else:
        assert job["reasons"][0].startswith(
            f'actor Keeper "arm-keeper" ({actor_id}) has max_restarts=0'
        ), job["reasons"]
    (actor,) = job["actors"]
    assert (actor["actor_id"], actor["will_restart"]) == (actor_id, False)


def test_job_whose_tasks_have_retries_left_and_no_put_objects_on_the_node_will_recover(
    cluster: EmbeddedRayCluster, job_id: str
) -> None:
    import ray

    driver_node = ray.get_runtime_context().get_node_id()
    if driver_node == cluster.node_id_for(THIRD_WORKER.instance_id):
        pytest.skip("Ray attached this test's driver to the third worker: the job goes with it")
    if driver_node in {cluster.node_id_for(w.instance_id) for w in DRAINED_BEFORE}:
        pytest.skip(
            "Ray attached this test's driver to a worker drained earlier: it places nothing"
        )
    # GIVEN two tasks with retries left running on the third worker, and nothing else there
    step = ray.remote(max_retries=3, num_cpus=0.5)(crunch)
    running = [on_node(step, THIRD_WORKER.instance_id, name="crunch").remote(6.0) for _ in range(2)]
    wait_until_running(cluster, "crunch", 2)

    # WHEN the spot warning for that worker is answered
    job = impact_of(cluster, THIRD_WORKER.instance_id, job_id)

    # THEN Ray will recover the job: both tasks are retried, their time so far is redone
    assert job["verdict"] == "will-recover", job["reasons"]
    assert job["tasks_running"] == 2
    assert all(t["retries_left"] and t["kind"] == "task" for t in job["tasks"])
    assert job["reasons"][0].startswith('2 tasks "crunch"')
    assert "retried elsewhere" in job["reasons"][0]
    assert job["compute_redone_s"] > 0
    assert job["objects"]["lost_count"] == 0
    assert ray.get(running, timeout=60)  # and the drained node lets them finish


def test_job_with_a_put_object_whose_only_copy_is_on_the_node_is_lost_in_the_ledger(
    cluster: EmbeddedRayCluster, job_id: str, tmp_path: Path
) -> None:
    import ray

    if ray.get_runtime_context().get_node_id() in {
        cluster.node_id_for(w.instance_id) for w in DRAINED_BEFORE
    }:
        pytest.skip(
            "Ray attached this test's driver to a worker drained earlier: it places nothing"
        )
    # GIVEN a restartable actor on the x86 worker that ray.put a 2 MB object there
    keeper = keeper_on(X86_SPOT_WORKER.instance_id, "x86-keeper", max_restarts=-1)
    (stored,) = ray.get(keeper.put_large.remote(2_000_000), timeout=60)
    object_id = stored.hex()
    ledger = tmp_path / "ledger.sqlite3"

    # WHEN the sample spot warning for that worker is replayed through the Lambda's code
    replayed = spot_responder(
        "replay",
        "--ray-address",
        cluster.address,
        "--ledger",
        str(ledger),
        "--json",
        str(EVENTS / "spot-interruption-terminate.json"),
    )

    # THEN the replay shows the job lost, the reason naming the object (owned by the actor
    # on the node, its only copy there, and held by this driver elsewhere)
    assert replayed.returncode == 0, replayed.stderr
    (notice_shown,) = json.loads(replayed.stdout)
    assert notice_shown["instance_id"] == X86_SPOT_WORKER.instance_id
    jobs = {job["job_id"]: job for job in notice_shown["impacted_jobs"]}
    job = jobs[job_id]
    assert job["verdict"] == "lost"
    if ray.get_runtime_context().get_node_id() == cluster.node_id_for(X86_SPOT_WORKER.instance_id):
        # Ray 2.50 may attach this test's driver to any raylet of its IP (all of them here):
        # on the warned node, the whole job goes with it, and that is the reason given
        assert job["reasons"][0] == "the job's driver runs on the node: the job ends with it"
        return
    named = [reason for reason in job["reasons"] if object_id in reason]
    assert len(named) == 1, json.dumps([object_id, job])
    (object_reason,) = named
    assert "its owner lives on the node" in object_reason
    assert "cannot be rebuilt" in object_reason
    assert job["objects"]["count"] == job["objects"]["lost_count"] == 1
    assert job["objects"]["bytes"] >= 2_000_000
    assert any("restarts elsewhere" in reason for reason in job["reasons"])  # the actor

    # AND the ledger answers per job: that interruption hit it, with the verdict
    listed = spot_responder("ledger", "jobs", job_id, "--ledger", str(ledger), "--json")
    assert listed.returncode == 0, listed.stderr
    (hit,) = json.loads(listed.stdout)
    assert (hit["job_id"], hit["instance_id"]) == (job_id, X86_SPOT_WORKER.instance_id)
    assert hit["impact"]["verdict"] == "lost"
    assert any(object_id in reason for reason in hit["impact"]["reasons"])
    shown = spot_responder("ledger", "jobs", job_id, "--ledger", str(ledger))
    assert "lost" in shown.stdout
    assert object_id[:16] in shown.stdout
