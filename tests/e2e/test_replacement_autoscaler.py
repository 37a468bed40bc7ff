"""Replacement capacity on the real Ray autoscaler (v2, fake_multinode provider, no Docker).

The cluster has the production node types plus a second x86 spot pool, `x86_spot_worker_2`,
so that a spot interruption can be replaced on spot; its one x86_spot_worker node is
instance i-0a1b2c3d4e5f60001 (label spot-responder/instance-id). Nodes idle for 6 s are
removed, so a released request visibly gives its capacity back. Each test starts from a
cluster without workers and prints how long it took from the request to the node joining.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ray_hooks.capacity import (
    EXPIRED,
    JOINED,
    REQUESTED,
    ReplacementAsk,
    reconcile,
    request_replacements,
)
from ray_hooks.replacement import ON_DEMAND, SPOT, X86_64, Pool, ReplacementOptions
from tests.autoscaler_cluster import (
    PRODUCTION_WORKER_TYPES,
    FakeAutoscalingCluster,
    FakeNode,
    WorkerType,
    fake_autoscaling_cluster,
)
from tests.ray_hooks_support import notice, request, run_ray_hooks

pytestmark = [pytest.mark.ray, pytest.mark.autoscaler]

JOIN_TIMEOUT_S = 60  # ~3 s measured; a launch right after a node exited can take ~35 s
IDLE_TIMEOUT_MINUTES = 0.1
SPOT_INSTANCE = "i-0a1b2c3d4e5f60001"
WORKER_TYPES = (
    WorkerType("x86_spot_worker", SPOT, X86_64, instance_id=SPOT_INSTANCE),
    *PRODUCTION_WORKER_TYPES[1:],
    WorkerType("x86_spot_worker_2", SPOT, X86_64),
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[FakeAutoscalingCluster]:
    with fake_autoscaling_cluster(
        worker_types=WORKER_TYPES,
        idle_timeout_minutes=IDLE_TIMEOUT_MINUTES,
        include_dashboard=True,  # the impact analysis of `respond` asks the state API
    ) as started:
        yield started


@pytest.fixture
def gcs(cluster: FakeAutoscalingCluster) -> Iterator[Any]:
    """A GcsClient as `ray_hooks` makes it; the test starts and ends without workers or requests."""
    from ray_hooks.cluster import connect

    client = connect(cluster.gcs_address)
    _wait_for_no_workers(cluster)
    yield client
    reconcile(client, now=_far_future())  # expire whatever is left: clears the constraint


def ask(instance_id: str, *unavailable: str, mode: str = "spot-first") -> ReplacementAsk:
    """A drained x86 spot node of zone us-west-2a to replace (the node itself is not needed)."""
    return ReplacementAsk(
        notice_id=f"{instance_id}#spot-interruption",
        instance_id=instance_id,
        options=ReplacementOptions(mode, tuple(Pool(p) for p in unavailable)),
        node_type="x86_spot_worker",
        zone="us-west-2a",
    )


def test_replacement_joins_in_the_chosen_spot_pool_and_reconcile_then_releases_it(
    cluster: FakeAutoscalingCluster, gcs: Any
) -> None:
    # GIVEN an x86 spot node of us-west-2a was interrupted
    started = time.monotonic()

    # WHEN its replacement is asked for
    (request,) = request_replacements(
        gcs, [ask("i-0a1b2c3d4e5f60001")], config_path=cluster.config_path
    )

    # THEN the other x86 spot pool is asked, and a node of that type joins
    assert (request.status, request.node_type, request.market) == (
        REQUESTED,
        "x86_spot_worker_2",
        SPOT,
    ), request.reason
    assert _constraint(gcs) == [({"CPU": 1.0, "x86_spot_worker_2": 1.0}, "x86_spot_worker_2")]
    node = _wait_for_join(cluster, "x86_spot_worker_2", started)
    assert node.labels["ray.io/market-type"] == SPOT

    # WHEN reconcile runs after it joined THEN the request is released and the constraint cleared
    result = reconcile(gcs)
    assert [(r.status, r.joined_node_id) for r in result.released] == [(JOINED, node.node_id)]
    assert result.outstanding == ()
    assert _constraint(gcs) == []
    assert "x86_spot_worker@us-west-2a" in result.unavailable_pools

    # AND the replacement, no longer asked for, is removed once idle: nothing stays over-provisioned
    gone = cluster.wait_for(lambda: not cluster.alive_workers(), 60, "idle removal")
    print(f"\nreleased replacement removed {gone:.1f} s after reconcile")


def test_with_the_other_spot_pool_unavailable_an_on_demand_node_joins_instead(
    cluster: FakeAutoscalingCluster, gcs: Any
) -> None:
    started = time.monotonic()

    (request,) = request_replacements(
        gcs, [ask("i-0a1b2c3d4e5f60002", "x86_spot_worker_2")], config_path=cluster.config_path
    )

    assert (request.node_type, request.market) == ("x86_ondemand_worker", ON_DEMAND), request.reason
    assert "x86_spot_worker_2 (unavailable in every zone)" in request.reason
    node = _wait_for_join(cluster, "x86_ondemand_worker", started)
    assert node.labels["ray.io/market-type"] == ON_DEMAND
    assert [r.status for r in reconcile(gcs).released] == [JOINED]


def test_two_replacements_are_asked_together_and_a_repeated_notice_does_not_ask_twice(
    cluster: FakeAutoscalingCluster, gcs: Any
) -> None:
    started = time.monotonic()
    first = ask("i-0a1b2c3d4e5f60003")
    arm = ReplacementAsk(
        "i-0a1b2c3d4e5f60004#spot-interruption",
        "i-0a1b2c3d4e5f60004",
        ReplacementOptions(),
        node_type="arm_spot_worker",
    )

    requests = request_replacements(gcs, [first, arm], config_path=cluster.config_path)
    again = request_replacements(gcs, [first], config_path=cluster.config_path)

    assert [r.node_type for r in requests] == ["x86_spot_worker_2", "arm_ondemand_worker"]
    assert again[0].reason.startswith("already asked")
    # the union of both requests is what the autoscaler holds, each bundle once
    assert sorted(node_type for _, node_type in _constraint(gcs)) == [
        "arm_ondemand_worker",
        "x86_spot_worker_2",
    ]
    _wait_for_join(cluster, "x86_spot_worker_2", started)
    _wait_for_join(cluster, "arm_ondemand_worker", started)
    assert sorted(r.node_type or "" for r in reconcile(gcs).released) == [
        "arm_ondemand_worker",
        "x86_spot_worker_2",
    ]


def test_an_expired_request_is_released_and_the_constraint_cleared(
    cluster: FakeAutoscalingCluster, gcs: Any
) -> None:
    (request,) = request_replacements(
        gcs, [ask("i-0a1b2c3d4e5f60005")], config_path=cluster.config_path, ttl_s=1
    )
    assert request.status == REQUESTED

    result = reconcile(gcs, now=_far_future())

    assert [r.status for r in result.released] == [EXPIRED]
    assert _constraint(gcs) == []


def test_respond_drains_then_asks_for_the_replacement_and_reconcile_releases_it(
    cluster: FakeAutoscalingCluster, gcs: Any
) -> None:
    # GIVEN the x86 spot node of instance i-0a1b2c3d4e5f60001, kept up by a workload's request
    from ray.autoscaler.v2.sdk import request_cluster_resources

    workload = {"resources": {"CPU": 1.0, "x86_spot_worker": 1.0}, "label_selector": {}}
    request_cluster_resources(cluster.gcs_address, [workload])
    spot = _wait_for_join(cluster, "x86_spot_worker", time.monotonic())
    warning = notice(SPOT_INSTANCE) | {
        "replacement": {"mode": "spot-first", "unavailable_pools": ["arm_spot_worker@us-west-2a"]}
    }

    # WHEN the head node gets its spot interruption warning, with replacement options
    started = time.monotonic()
    run = run_ray_hooks(
        "respond",
        "--address",
        cluster.gcs_address,
        stdin=json.dumps(request(warning)),
        env={"RAY_HOOKS_CLUSTER_CONFIG": cluster.config_path},
    )

    # THEN the node was drained first, and the other x86 spot pool was asked for
    assert run.code == 0, run.stderr
    (result,) = run.document["results"]
    assert (result["outcome"], result["ray_node_id"]) == ("drained", spot.node_id)
    (capacity,) = run.document["capacity_requests"]
    assert (capacity["status"], capacity["node_type"], capacity["market"]) == (
        REQUESTED,
        "x86_spot_worker_2",
        SPOT,
    ), capacity["reason"]
    assert capacity["bundles"] == [{"CPU": 1.0, "x86_spot_worker_2": 1.0}]
    print(f"\nrespond: drain_s {run.document['timings']['drain_s']}, total {run.seconds:.1f} s")
    replacement = _wait_for_join(cluster, "x86_spot_worker_2", started)

    # WHEN reconcile runs THEN the request is released: its replacement joined
    reconciled = run_ray_hooks(
        "reconcile",
        "--address",
        cluster.gcs_address,
        stdin=json.dumps(
            {"version": 1, "operation": "reconcile", "cluster": "ray-on-laptop", "request_id": "r1"}
        ),
    )
    assert reconciled.code == 0, reconciled.stderr
    assert [(r["status"], r["joined_node_id"]) for r in reconciled.document["released"]] == [
        (JOINED, replacement.node_id)
    ]
    assert reconciled.document["outstanding"] == []
    assert "x86_spot_worker@-" in reconciled.document["unavailable_pools"]
    assert _constraint(gcs) == []


def test_respond_refuses_malformed_replacement_options_before_touching_ray() -> None:
    warning = notice(SPOT_INSTANCE) | {"replacement": {"mode": "cheapest"}}

    run = run_ray_hooks("respond", "--address", "127.0.0.1:9", stdin=json.dumps(request(warning)))

    assert run.code == 2, run.stderr
    assert "notices[0].replacement.mode must be one of" in run.document["error"]


def test_reconcile_refuses_a_request_of_another_operation_with_exit_code_2() -> None:
    text = json.dumps({"version": 1, "operation": "respond", "cluster": "c", "request_id": "r"})

    run = run_ray_hooks("reconcile", "--address", "127.0.0.1:9", stdin=text)

    assert run.code == 2, run.stderr
    assert "operation must be 'reconcile'" in run.document["error"]


# ---------------------------------------------------------------- helpers


def _wait_for_join(cluster: FakeAutoscalingCluster, node_type: str, started: float) -> FakeNode:
    def joined() -> bool:
        return any(n.node_type == node_type for n in cluster.alive_workers())

    try:
        cluster.wait_for(joined, JOIN_TIMEOUT_S, f"a {node_type} node")
    except TimeoutError:
        pytest.fail(f"no {node_type} node joined; autoscaler log:\n{cluster.monitor_log()}")
    seconds = time.monotonic() - started
    print(f"\nrequest -> {node_type} joined: {seconds:.1f} s")
    return next(n for n in cluster.alive_workers() if n.node_type == node_type)


def _wait_for_no_workers(cluster: FakeAutoscalingCluster) -> None:
    cluster.wait_for(lambda: not cluster.alive_workers(), 60, "no workers left")


def _constraint(gcs: Any) -> list[tuple[dict[str, float], str]]:
    """What the autoscaler is asked to keep: (bundle, node-group selector) per bundle."""
    from ray.autoscaler.v2.sdk import get_cluster_resource_state

    state = get_cluster_resource_state(gcs)
    asked = []
    for constraint in state.cluster_resource_constraints:
        for item in constraint.resource_requests:
            selector = {
                c.label_key: list(c.label_values)
                for s in item.request.label_selectors
                for c in s.label_constraints
            }
            group = selector.get("ray.io/node-group", [""])[0]
            asked.extend([(dict(item.request.resources_bundle), group)] * item.count)
    return asked


def _far_future() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(days=1)
