"""The fake_multinode harness itself: it starts the real autoscaler and leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.autoscaler_cluster import (
    FAKE_HEAD_NODE_ID,
    HEAD_NODE_TYPE,
    FakeAutoscalingCluster,
    autoscaler_cluster,  # noqa: F401  (the shared fixture, used below)
    fake_autoscaling_cluster,
)

pytestmark = [pytest.mark.ray, pytest.mark.autoscaler]


def test_the_fixture_yields_a_head_with_cpu_0_and_the_production_node_types(
    autoscaler_cluster: FakeAutoscalingCluster,  # noqa: F811
) -> None:
    (head,) = [n for n in autoscaler_cluster.nodes() if n.is_head]

    assert (head.node_id, head.node_type) == (FAKE_HEAD_NODE_ID, HEAD_NODE_TYPE)
    assert head.labels["ray.io/market-type"] == "on-demand"
    assert "CPU" not in head.resources
    assert "x86_spot_worker" in Path(autoscaler_cluster.config_path).read_text()


def test_shutdown_ends_the_whole_process_group_with_the_launched_nodes_and_the_temp_dir() -> None:
    from ray.autoscaler.v2.sdk import request_cluster_resources

    with fake_autoscaling_cluster() as cluster:
        request_cluster_resources(
            cluster.gcs_address, [{"resources": {"arm_spot_worker": 1.0}, "label_selector": {}}]
        )
        cluster.wait_for(lambda: len(cluster.alive_workers()) == 1, 60, "a worker")
        (worker,) = cluster.alive_workers()
        # a fake node is a raylet of the head's process group, named by the provider's node id
        assert worker.node_id == worker.instance_id == FAKE_HEAD_NODE_ID[:-5] + "00001"
        assert worker.node_type == "arm_spot_worker"
        group = cluster.process_group
        temp_dir = cluster.temp_dir

    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    assert not Path(temp_dir).exists()
