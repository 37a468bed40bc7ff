"""A verdict checked against what Ray then does: drain, kill the node as EC2 does, reconcile.

One real local cluster (a head with no CPUs, two labelled workers), the GCS told to notice a
dead raylet within seconds. Each worker holds one actor of this test's job; the warning is
answered with a deadline a few seconds ahead, the node is SIGKILLed after it (what EC2 does
at the termination time), and `python -m ray_hooks reconcile` then reports, per judged job,
what Ray's own tables say happened. The test reads Ray's tables itself too.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ray_hooks import compat
from tests.ray_hooks_support import (
    FAST_NODE_DEATH,
    environment,
    notice,
    request,
    run_ray_hooks,
)

pytestmark = pytest.mark.ray

LABEL = "spot-responder/instance-id"
RESTARTABLE = "i-0a1b2c3d4e5f60071"
FRAGILE = "i-0a1b2c3d4e5f60072"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with environment(FAST_NODE_DEATH):
        yield from _cluster()


def _cluster() -> Iterator[Any]:
    import ray
    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="spot-outcomes-")
    # Ray before 2.60 writes the cluster's address file into its default temp dir whatever
    # temp_dir says, and fails when that directory is not there yet (a fresh machine)
    address_file = ray._private.utils.get_ray_address_file(None)
    os.makedirs(os.path.dirname(address_file), exist_ok=True)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "temp_dir": temp_dir, "dashboard_port": 0},
    )
    try:
        # the driver first, while the head is the only raylet: a Ray before 2.60 attaches a
        # driver to any raylet of its IP, and a worker the driver is on cannot be killed
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        cluster.workers = {
            instance_id: cluster.add_node(num_cpus=1, labels={LABEL: instance_id})
            for instance_id in (RESTARTABLE, FRAGILE)
        }
        cluster.spare = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


class Keeper:
    def where(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())


def keeper_on(node_id: str, max_restarts: int) -> Any:
    """A Keeper placed on the node, free to restart elsewhere (a soft affinity)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0.5, max_restarts=max_restarts)(Keeper)
    there = NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)
    handle = remote.options(scheduling_strategy=there).remote()
    ray.get(handle.where.remote(), timeout=60)
    return handle


def actor_in_ray(cluster: Any, actor_id: str) -> Any:
    from ray.util.state import get_actor

    return get_actor(actor_id, address=cluster.address, timeout=10)


def death_reason(gcs: Any, node_id: str) -> str:
    from ray.core.generated import common_pb2

    (info,) = [i for i in gcs.get_all_node_info().values() if bytes(i.node_id).hex() == node_id]
    return str(common_pb2.NodeDeathInfo.Reason.Name(info.death_info.reason))


def reconcile(cluster: Any, request_id: str) -> Any:
    """`python -m ray_hooks reconcile`, with outcomes read as soon as a node is dead."""
    return run_ray_hooks(
        "reconcile",
        "--address",
        cluster.address,
        stdin=json.dumps(
            {"version": 1, "operation": "reconcile", "cluster": "c", "request_id": request_id}
        ),
        env={"RAY_HOOKS_OUTCOME_SETTLE_S": "0"},
    )


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_verdicts_are_checked_against_what_ray_did_once_the_node_is_gone(cluster: Any) -> None:
    import ray
    from ray._raylet import GcsClient

    gcs = GcsClient(address=cluster.gcs_address)
    job_id = ray.get_runtime_context().get_job_id()
    # GIVEN an actor that may restart once on one worker, and one that may not on the other
    nodes = {instance_id: node.node_id for instance_id, node in cluster.workers.items()}
    restartable = keeper_on(nodes[RESTARTABLE], max_restarts=1)
    fragile = keeper_on(nodes[FRAGILE], max_restarts=0)
    assert ray.get(restartable.where.remote()) == nodes[RESTARTABLE]

    # WHEN both warnings are answered with a deadline a few seconds ahead
    deadline = (datetime.now(UTC) + timedelta(seconds=4)).replace(microsecond=0)
    answered = run_ray_hooks(
        "respond",
        "--address",
        cluster.address,
        stdin=json.dumps(
            request(notice(RESTARTABLE, deadline=deadline), notice(FRAGILE, deadline=deadline))
        ),
    )
    assert answered.code == 0, answered.stderr
    verdicts = {
        result["instance_id"]: {job["job_id"]: job["verdict"] for job in result["impacted_jobs"]}
        for result in answered.document["results"]
    }
    assert verdicts == {RESTARTABLE: {job_id: "will-recover"}, FRAGILE: {job_id: "lost"}}

    # AND EC2 takes both machines after the deadline
    while datetime.now(UTC) < deadline + timedelta(seconds=1):
        time.sleep(0.2)
    for node in cluster.workers.values():
        cluster.remove_node(node, allow_graceful=False)
    wait_until(
        lambda: all(death_reason(gcs, node_id) != "UNSPECIFIED" for node_id in nodes.values()),
        30,
        "Ray to book both deaths",
    )

    # THEN Ray books both as preemptions, restarts the one actor for free, loses the other
    assert {death_reason(gcs, node_id) for node_id in nodes.values()} == {
        "AUTOSCALER_DRAIN_PREEMPTED"
    }
    wait_until(
        lambda: actor_in_ray(cluster, fragile._actor_id.hex()).state == "DEAD", 30, "the death"
    )
    wait_until(
        lambda: actor_in_ray(cluster, restartable._actor_id.hex()).state == "ALIVE",
        60,
        "the restart",
    )
    assert ray.get(restartable.where.remote(), timeout=60) == cluster.spare.node_id

    # AND reconcile reports, per judged job, the same as Ray's own tables
    checked = reconcile(cluster, "rec-1")
    assert checked.code == 0, checked.stderr
    outcomes = {o["instance_id"]: o for o in checked.document["verdict_outcomes"]}
    assert {k: (o["verdict"], o["outcome"]) for k, o in outcomes.items()} == {
        RESTARTABLE: ("will-recover", "recovered"),
        FRAGILE: ("lost", "lost"),
    }, f"respond: {answered.stderr}\nreconcile: {checked.stderr}"
    assert {o["node_death"] for o in outcomes.values()} == {"AUTOSCALER_DRAIN_PREEMPTED"}
    assert any("1 restart(s), 1 free" in d for d in outcomes[RESTARTABLE]["details"])

    # AND a reported outcome is not reported again
    again = reconcile(cluster, "rec-2")
    assert again.document["verdict_outcomes"] == []


def test_a_stuck_raylet_fails_only_its_own_drain_and_the_others_still_drain(cluster: Any) -> None:
    import signal

    from ray._private import ray_constants
    from ray._raylet import GcsClient

    gcs = GcsClient(address=cluster.gcs_address)
    stuck_id, healthy_id = "i-0a1b2c3d4e5f60073", "i-0a1b2c3d4e5f60074"
    stuck = cluster.add_node(num_cpus=1, labels={LABEL: stuck_id})
    healthy = cluster.add_node(num_cpus=1, labels={LABEL: healthy_id})
    cluster.wait_for_nodes()
    keepers = [keeper_on(node.node_id, max_restarts=0) for node in (stuck, healthy)]
    raylet = stuck.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
    deadline = (datetime.now(UTC) + timedelta(seconds=60)).replace(microsecond=0)
    # GIVEN one of the two warned workers' raylet stops answering (SIGSTOP)
    raylet.send_signal(signal.SIGSTOP)
    try:
        # WHEN both warnings are answered in one request
        answered = run_ray_hooks(
            "respond",
            "--address",
            cluster.address,
            stdin=json.dumps(
                request(notice(stuck_id, deadline=deadline), notice(healthy_id, deadline=deadline))
            ),
        )
    finally:
        raylet.send_signal(signal.SIGCONT)
    assert answered.code == 0, answered.stderr

    # THEN the healthy worker is draining in Ray's books with the warning's deadline, and the
    # stuck one's notice alone failed, to be retried
    outcomes = {r["instance_id"]: r["outcome"] for r in answered.document["results"]}
    assert outcomes[healthy_id] == "drained"
    assert outcomes[stuck_id] in {"drain-failed", "drain-unconfirmed"}
    assert compat.draining_nodes(gcs, 10)[healthy.node_id] == int(deadline.timestamp() * 1000)
    del keepers


def test_notices_in_any_order_leave_ray_the_earliest_deadline_and_the_death_is_a_preemption(
    cluster: Any,
) -> None:
    """On every supported Ray, judged by the death Ray books: a scheduled change days ahead,
    then the spot warning, then a rebalance recommendation with a later time."""
    from ray._raylet import GcsClient

    gcs = GcsClient(address=cluster.gcs_address)
    instance_id = "i-0a1b2c3d4e5f60075"
    node = cluster.add_node(num_cpus=1, labels={LABEL: instance_id})  # waits for this node
    keeper = keeper_on(node.node_id, max_restarts=0)  # keeps the node busy, so draining
    now = datetime.now(UTC).replace(microsecond=0)
    warning = now + timedelta(seconds=12)

    # WHEN a Health scheduled change (days ahead), the spot warning, then a later notice come
    answers = [
        run_ray_hooks(
            "respond",
            "--address",
            cluster.address,
            stdin=json.dumps(request(notice(instance_id, kind=kind, deadline=deadline))),
        )
        for kind, deadline in (
            ("scheduled-change", now + timedelta(days=3)),
            ("spot-interruption", warning),
            ("scheduled-change", now + timedelta(days=2)),
        )
    ]
    assert all(answer.code == 0 for answer in answers), [a.stderr for a in answers]
    outcomes = [answer.document["results"][0]["outcome"] for answer in answers]
    assert outcomes == ["drained", "drained", "already-draining"], outcomes

    # AND EC2 takes the machine at the warning's time
    while datetime.now(UTC) < warning + timedelta(seconds=1):
        time.sleep(0.2)
    cluster.remove_node(node, allow_graceful=False)
    wait_until(lambda: death_reason(gcs, node.node_id) != "UNSPECIFIED", 30, "the death")

    # THEN Ray books a preemption, not a crash: the warning's deadline had passed
    assert death_reason(gcs, node.node_id) == "AUTOSCALER_DRAIN_PREEMPTED"
    del keeper
