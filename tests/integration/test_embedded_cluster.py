"""The embedded cluster that local replay runs on: nodes that play the instances of events/."""

from __future__ import annotations

from pathlib import Path

import pytest

from spot_responder.cli.embedded import (
    ARM_SPOT_WORKER,
    HEAD_NODE,
    X86_SPOT_WORKER,
    EmbeddedRayCluster,
    start_sample_workload,
)

pytestmark = pytest.mark.ray


def processes_mentioning(text: str) -> set[int]:
    """Live (not zombie) processes whose command line mentions `text`."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            if (
                text in (proc / "cmdline").read_text()
                and (proc / "stat").read_text().split(") ")[1][0] not in "ZX"
            ):
                found.add(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_embedded_cluster_runs_the_sample_workload_and_leaves_nothing_behind() -> None:
    import ray
    from ray._common.utils import get_ray_address_file

    address_file = Path(get_ray_address_file(None))
    before = address_file.read_text() if address_file.exists() else None

    # GIVEN an embedded cluster with its sample workload
    with EmbeddedRayCluster() as cluster:
        workload = start_sample_workload(cluster.address, task_seconds=2)
        temp_dir = cluster.temp_dir
        pids = processes_mentioning(temp_dir)

        # THEN its nodes carry the labels of the instances in events/
        labels = {
            node["Labels"]["spot-responder/instance-id"]: node["Labels"]
            for node in ray.nodes()
            if node["Alive"]
        }
        assert labels[HEAD_NODE.instance_id]["ray.io/market-type"] == "on-demand"
        assert labels[X86_SPOT_WORKER.instance_id]["ray.io/node-group"] == "x86_spot_worker"
        assert labels[ARM_SPOT_WORKER.instance_id]["ray.io/node-group"] == "arm_spot_worker"
        assert cluster.node_id_for(ARM_SPOT_WORKER.instance_id) in {
            node["NodeID"] for node in ray.nodes()
        }
        # AND the sample tasks ran on both spot workers, none on the head
        ran_on = set(workload.results(timeout_s=60))
        assert ran_on == {
            cluster.node_id_for(X86_SPOT_WORKER.instance_id),
            cluster.node_id_for(ARM_SPOT_WORKER.instance_id),
        }

    # AND after it, no process of it lives, its files are gone, and Ray's address file
    # (which other Ray users of the machine rely on) is as it was
    assert not ray.is_initialized()
    assert len(pids) >= 3  # GCS and a raylet per node, at least
    assert not processes_mentioning(temp_dir) & pids
    assert not Path(temp_dir).exists()
    assert (address_file.read_text() if address_file.exists() else None) == before
