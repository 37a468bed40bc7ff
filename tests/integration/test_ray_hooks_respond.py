"""`python -m ray_hooks respond` against a real local Ray cluster, checked through Ray itself.

One cluster for the module: head + three spot workers. Each test drains a different worker
(or none), and checks what changed against what was there before it, so the tests do not
depend on their order.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ray_hooks import compat
from spot_responder.cli.embedded import (
    ARM_SPOT_WORKER,
    HEAD_NODE,
    INSTANCE_ID_LABEL,
    X86_SPOT_WORKER,
    EmbeddedNode,
    EmbeddedRayCluster,
    SampleProgress,
    sample_batch,
)
from tests.ray_hooks_support import (
    Run,
    drained_by_ray,
    example_response_shape,
    json_shape,
    notice,
    request,
    run_ray_hooks,
    same_shape,
)

pytestmark = pytest.mark.ray

THIRD_WORKER = EmbeddedNode("i-0a1b2c3d4e5f60003", "x86_spot_worker", "spot")
UNKNOWN_INSTANCE = "i-0a1b2c3d4e5f60009"


@pytest.fixture(scope="module")
def cluster(ray_cluster: EmbeddedRayCluster) -> EmbeddedRayCluster:
    """The shared cluster with a third worker, and this process connected as a driver."""
    import ray

    ray_cluster.add_worker(THIRD_WORKER)
    ray.init(address=ray_cluster.address, log_to_driver=False, logging_level="WARNING")
    return ray_cluster  # the embedded cluster disconnects the driver when it shuts down


@pytest.fixture(scope="module")
def gcs(cluster: EmbeddedRayCluster) -> Any:
    from ray._raylet import GcsClient

    return GcsClient(address=cluster.gcs_address)


def respond(cluster: EmbeddedRayCluster, *notices: dict[str, Any]) -> Run:
    run = run_ray_hooks(
        "respond", "--address", cluster.address, stdin=json.dumps(request(*notices))
    )
    assert run.code == 0, run.stderr
    assert same_shape(json_shape(run.document), example_response_shape_for(run.document))
    return run


def example_response_shape_for(document: dict[str, Any]) -> Any:
    """The example's shape, with as many results as the document (lists compare by item 0)."""
    shape = example_response_shape("drain-two-workers.response.json")
    shape["results"] = [shape["results"][0]] * len(document["results"])
    return shape


def on_node(remote: Any, instance_id: str, **options: Any) -> Any:
    return remote.options(label_selector={INSTANCE_ID_LABEL: instance_id}, **options)


def progress_actor_on(instance_id: str, name: str) -> Any:
    import ray

    actor = on_node(ray.remote(num_cpus=0)(SampleProgress), instance_id, name=name).remote()
    ray.get(actor.started.remote(), timeout=60)
    return actor


def running_tasks_named(cluster: EmbeddedRayCluster, name: str) -> int:
    from ray.util.state import list_tasks

    filters: list[Any] = [("name", "=", name), ("state", "=", "RUNNING")]
    return len(list_tasks(address=cluster.address, filters=filters))


def node_state(cluster: EmbeddedRayCluster, node_id: str) -> Any:
    """The node as Ray's state API shows it."""
    from ray.util.state import list_nodes

    (node,) = list_nodes(
        address=cluster.address,
        filters=[("node_id", "=", node_id)],
        detail=True,
        raise_on_missing_output=False,
    )
    return node


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_warned_worker_is_drained_its_running_task_finishes_and_new_work_goes_elsewhere(
    cluster: EmbeddedRayCluster, gcs: Any
) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # GIVEN a task running on the x86 worker (half its CPU) and an actor living there
    worker = cluster.node_id_for(X86_SPOT_WORKER.instance_id)
    progress = progress_actor_on(X86_SPOT_WORKER.instance_id, "x86-progress")
    long_step = ray.remote(max_retries=0, num_cpus=0.5)(sample_batch)
    running = on_node(long_step, X86_SPOT_WORKER.instance_id, name="long_step").remote(
        progress, 6.0
    )
    # (Ray's task events reach the GCS about once a second: wait until they say RUNNING)
    wait_until(lambda: running_tasks_named(cluster, "long_step") == 1, 30, "the task to run")
    drained_before = drained_by_ray(gcs)

    # WHEN the spot warning for that instance is answered
    run = respond(cluster, notice(X86_SPOT_WORKER.instance_id))

    # THEN Ray drains exactly that node, and the response says so with the work at stake
    (result,) = run.document["results"]
    assert result["outcome"] == "drained"
    assert result["ray_node_id"] == worker
    assert result["node"]["node_group"] == "x86_spot_worker"
    assert result["drain_issued_at"] is not None
    assert drained_by_ray(gcs) - drained_before == {worker}
    (job,) = result["impacted_jobs"]
    assert job["job_id"] == ray.get_runtime_context().get_job_id()
    assert [(task["name"], task["attempt"]) for task in job["tasks"]] == [("long_step", 0)]
    assert job["tasks"][0]["running_s"] >= 0
    assert [(actor["name"], actor["max_restarts"]) for actor in job["actors"]] == [
        ("x86-progress", 0)
    ]
    assert job["actors"][0]["class_name"].endswith("SampleProgress")

    # AND new work that prefers that node, and would fit there, runs on another node
    @ray.remote(num_cpus=0.5)
    def where_new_work_runs() -> str:
        return str(ray.get_runtime_context().get_node_id())

    prefers_worker = NodeAffinitySchedulingStrategy(node_id=worker, soft=True)
    new_work = where_new_work_runs.options(scheduling_strategy=prefers_worker).remote()
    assert ray.get(new_work, timeout=60) != worker

    # AND the task that was running finishes on the drained node with its result
    assert ray.get(running, timeout=60) == worker

    # AND once its last actor is gone, the node leaves, recorded by Ray as preempted
    ray.kill(progress)
    wait_until(lambda: node_state(cluster, worker).state == "DEAD", 30, "the node to exit")
    assert "Terminated due to preemption: spot-responder" in (
        node_state(cluster, worker).state_message or ""
    )


def test_a_draining_node_keeps_the_earliest_deadline_any_notice_gave_it(
    cluster: EmbeddedRayCluster, gcs: Any
) -> None:
    if not compat.probe().draining_from_gcs_client:
        # On Ray 2.50 this module's second label-selected actor stayed PENDING_CREATION on an
        # idle, alive worker (2026-12-02, not explained). The rule itself is checked on every
        # Ray by the death Ray books: tests/integration/test_verdict_outcomes.py.
        pytest.skip("needs Ray 2.60 here; see test_verdict_outcomes for older Rays")
    # GIVEN an actor keeping the arm worker busy, so that it stays draining
    worker = cluster.node_id_for(ARM_SPOT_WORKER.instance_id)
    busy = progress_actor_on(ARM_SPOT_WORKER.instance_id, "arm-progress")
    first_deadline = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=90)

    # WHEN two notices for it arrive in one request, then a later deadline, then an earlier
    first = respond(
        cluster,
        notice(ARM_SPOT_WORKER.instance_id, deadline=first_deadline),
        notice(ARM_SPOT_WORKER.instance_id, kind="rebalance-recommendation"),
    )
    later = respond(
        cluster,
        notice(ARM_SPOT_WORKER.instance_id, deadline=first_deadline + timedelta(seconds=10)),
    )
    held_after_later = compat.draining_nodes(gcs, 10)[worker]
    earlier_deadline = first_deadline - timedelta(seconds=30)
    earlier = respond(
        cluster,
        notice(ARM_SPOT_WORKER.instance_id, kind="scheduled-change", deadline=earlier_deadline),
    )

    # THEN the first request drains it once, with the earlier of its two deadlines
    assert [result["outcome"] for result in first.document["results"]] == ["drained", "drained"]
    first_given = first_deadline.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert {r["drain_deadline"] for r in first.document["results"]} == {first_given}
    # AND a later deadline leaves Ray's alone
    (kept,) = later.document["results"]
    assert kept["outcome"] == "already-draining"
    assert (kept["drain_deadline"], kept["drain_issued_at"]) == (first_given, None)
    assert held_after_later == int(first_deadline.timestamp() * 1000)
    # AND an earlier one replaces it in Ray's own books
    (moved,) = earlier.document["results"]
    assert moved["outcome"] == "drained"
    assert compat.draining_nodes(gcs, 10)[worker] == int(earlier_deadline.timestamp() * 1000)
    assert [actor["name"] for actor in moved["impacted_jobs"][0]["actors"]] == ["arm-progress"]
    del busy  # the node exits once its last actor is gone


def test_warning_for_the_head_node_is_refused_and_the_head_is_not_drained(
    cluster: EmbeddedRayCluster, gcs: Any
) -> None:
    head = cluster.node_id_for(HEAD_NODE.instance_id)

    run = respond(cluster, notice(HEAD_NODE.instance_id))

    (result,) = run.document["results"]
    assert result["outcome"] == "head-node"
    assert result["ray_node_id"] == head
    assert result["message"] == "refused: this is the head node; it is never drained"
    assert (result["drain_deadline"], result["drain_issued_at"]) == (None, None)
    assert head not in drained_by_ray(gcs)
    assert "REFUSED to drain" in run.stderr


def test_unknown_instance_is_not_found_even_at_an_ip_that_several_nodes_share(
    cluster: EmbeddedRayCluster, gcs: Any
) -> None:
    shared_ip = cluster.address.rsplit(":", 1)[0]
    drained_before = drained_by_ray(gcs)

    run = respond(cluster, notice(UNKNOWN_INSTANCE, private_ip=shared_ip))

    (result,) = run.document["results"]
    assert result["outcome"] == "node-not-found"
    assert (result["ray_node_id"], result["node"], result["impacted_jobs"]) == (None, None, [])
    assert f"spot-responder/instance-id={UNKNOWN_INSTANCE} or IP {shared_ip}" in result["message"]
    assert "shared by" in result["message"]
    assert drained_by_ray(gcs) == drained_before


def test_analyse_only_notice_reports_the_node_without_draining_it(
    cluster: EmbeddedRayCluster, gcs: Any
) -> None:
    worker = cluster.node_id_for(THIRD_WORKER.instance_id)

    run = respond(cluster, notice(THIRD_WORKER.instance_id, action="analyse"))

    (result,) = run.document["results"]
    assert result["outcome"] == "analysed"
    assert result["ray_node_id"] == worker
    assert result["drain_issued_at"] is None
    assert worker not in drained_by_ray(gcs)


def test_describe_lists_every_node_with_the_instance_it_plays(
    cluster: EmbeddedRayCluster,
) -> None:
    run = run_ray_hooks("describe", "--address", cluster.address)

    assert run.code == 0
    described = {node["instance_id"]: node for node in run.document["nodes"]}
    # the other tests drain the x86 and arm workers; the head and the third one stay
    assert {HEAD_NODE.instance_id, THIRD_WORKER.instance_id} <= set(described)
    assert set(described) <= set(cluster.instance_ids)
    assert described[HEAD_NODE.instance_id]["is_head"] is True
    assert described[HEAD_NODE.instance_id]["node_group"] == "head_node"
    assert described[THIRD_WORKER.instance_id]["market_type"] == "spot"
    assert {node["state"] for node in run.document["nodes"]} <= {"ALIVE", "DRAINING", "DEAD"}
    # a dead node is listed (as EC2 still describes a terminated instance) only for an
    # instance that no alive node plays
    playing = {n["instance_id"] for n in run.document["nodes"] if n["state"] != "DEAD"}
    departed = [n["instance_id"] for n in run.document["nodes"] if n["state"] == "DEAD"]
    assert not set(departed) & playing
    assert len(departed) == len(set(departed))
    assert same_shape(json_shape(run.document), example_response_shape("describe.response.json"))
