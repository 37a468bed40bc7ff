"""Replacement capacity while a Ray Data pipeline runs: Ray Data's own requester is in the cluster.

Once a Ray Data pipeline has run, its `AutoscalingCoordinator` (a detached actor) sends the
cluster's resource request every 20 s, which replaces whatever request was in place: the
responder registers its demand with it (marker bundles, ray_hooks/capacity/coordinator.py).
On the real Ray autoscaler v2 (fake_multinode provider), a cluster already running the warned
spot node A and a node of A's replacement type, both busy with the pipeline: WHEN A's warning
is replayed, THEN the responder's bundles stay in the cluster's request through the
coordinator's ticks, the replacement joins before A is killed at its termination time, and
the pipeline ends with every row, its tasks on A retried elsewhere.

Printed: how long the replay took and what it said, how often the responder's bundles were in
the request, the join time and the lead (replacement joined -> A killed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ray_hooks.replacement import SPOT, X86_64
from spot_responder.cli.autoscaled import FAST_HEALTH_CHECKS
from tests.autoscaler_cluster import (
    V1,
    FakeAutoscalingCluster,
    FakeNode,
    WorkerType,
    fake_autoscaling_cluster,
    replay_warning,
    request_of_the_cluster,
    send_demand,
)

pytest.importorskip("ray.data")
pytestmark = [pytest.mark.ray, pytest.mark.autoscaler, pytest.mark.coexistence]

INSTANCE_A = "i-0a1b2c3d4e5f60001"  # the sample warning's (events/)
WORKER_TYPES = (
    WorkerType("x86_spot_worker", SPOT, X86_64, cpus=2, instance_id=INSTANCE_A),
    WorkerType("x86_spot_worker_2", SPOT, X86_64, cpus=2, max_workers=2),
)
TERMINATION_AHEAD_S = 45
JOIN_TIMEOUT_S = 90
ROWS = 600


@pytest.fixture(scope="module", params=["v2", V1])
def cluster(request: pytest.FixtureRequest) -> Iterator[FakeAutoscalingCluster]:
    with fake_autoscaling_cluster(
        worker_types=WORKER_TYPES,
        autoscaler_v2=request.param == "v2",
        max_workers=4,
        idle_timeout_minutes=0.5,
        include_dashboard=True,  # the impact analysis of `respond` reads the state API
        extra_env=FAST_HEALTH_CHECKS,
    ) as started:
        yield started


def test_beside_a_ray_data_pipeline_the_replacement_joins_before_the_kill(
    cluster: FakeAutoscalingCluster, tmp_path: Path
) -> None:
    # GIVEN A and a node of its replacement type, both busy with a Ray Data pipeline whose
    # AutoscalingCoordinator is alive and sending the cluster's request
    before = _bring_up(cluster)
    with _Pipeline(cluster, tmp_path) as pipeline:
        termination = float(int(time.time()) + TERMINATION_AHEAD_S)

        # WHEN A's spot warning is replayed, EC2 terminating A at `termination`
        asked_at = time.time()
        notice = replay_warning(
            cluster, tmp_path, termination, event_id=f"data-{tmp_path.name}", safety_margin_s=5
        )

        # THEN A is drained and its replacement asked in the other spot pool...
        assert notice["action"] == "drained", notice
        replacement = notice["replacement"]
        assert (replacement["status"], replacement["node_type"]) == (
            "requested",
            "x86_spot_worker_2",
        ), replacement
        # ... through Ray Data's coordinator, as marker bundles only (no CPUs of Data's taken)
        assert "with Ray's AutoscalingCoordinator" in replacement["reason"], replacement
        marker = {"x86_spot_worker_2": 1.0}
        print(f"\nreplayed in {time.time() - asked_at:.1f} s: {replacement['reason']}")

        # ... AND a second x86_spot_worker_2 joins before A is killed, and the coordinator's
        # ticks keep the responder's bundles in the cluster's request until then
        joined = None
        looks: list[tuple[float, int]] = []  # (seconds after the replay, marker bundles)
        while time.time() < termination:  # watched to the end: the coordinator ticks
            looks.append((time.time() - asked_at, _request_of_the_cluster(cluster).count(marker)))
            joined = joined or _new_node(cluster, "x86_spot_worker_2", before)
            time.sleep(0.25)
        time.sleep(max(0.0, termination - time.time()))
        killed_at = time.time()
        # a drained node whose last row finished has left by itself (nothing to kill)
        left_early = cluster.kill_node(before["x86_spot_worker"].node_id) is None
        if joined is None:
            pytest.fail(f"no replacement before the kill; autoscaler log:\n{cluster.monitor_log()}")
        joined_at = joined.start_time_ms / 1000
        assert joined_at < killed_at
        dropped = [at for at, count in looks if count < 2]
        missing = ", ".join(f"{at:.1f} s" for at in dropped[:5]) or "none"
        print(
            f"the responder's 2 marker bundles in the cluster's request at "
            f"{len(looks) - len(dropped)} of {len(looks)} looks over {looks[-1][0]:.0f} s "
            f"(missing at: {missing}); replacement joined "
            f"{joined_at - asked_at:.1f} s after the replay; lead (joined -> termination time) "
            f"{killed_at - joined_at:.1f} s"
            + ("; A, idle once drained, had left by itself" if left_early else "")
        )
        # the coordinator ticks every 20 s: once registered (before that the direct request,
        # whole bundles, is in place), kept through at least one tick and never dropped
        registered = next((at for at, count in looks if count == 2), None)
        assert registered is not None, looks
        assert looks[-1][0] - registered > 20, looks
        assert not [at for at in dropped if at > registered], looks

        # AND the pipeline ends with every row: what ran on A was retried elsewhere
        outcome = pipeline.finish(timeout_s=240)
        assert outcome == {"rows": ROWS, "errors": []}, outcome


# ---------------------------------------------------------------- steps


def _bring_up(cluster: FakeAutoscalingCluster) -> dict[str, FakeNode]:
    types = [w.name for w in WORKER_TYPES]
    send_demand(
        cluster, [{"resources": {"CPU": 2.0, name: 1.0}, "label_selector": {}} for name in types]
    )

    def up() -> bool:
        return set(types) <= {n.node_type for n in cluster.alive_workers()}

    try:
        cluster.wait_for(up, JOIN_TIMEOUT_S, f"nodes of {types}")
    except TimeoutError:
        pytest.fail(f"the workers did not come up; autoscaler log:\n{cluster.monitor_log()}")
    send_demand(cluster, [])  # from here on the pipeline's coordinator asks
    return {n.node_type: n for n in cluster.alive_workers()}


def _request_of_the_cluster(cluster: FakeAutoscalingCluster) -> list[dict[str, float]]:
    return sorted(request_of_the_cluster(cluster), key=json.dumps)


def _new_node(
    cluster: FakeAutoscalingCluster, node_type: str, before: dict[str, FakeNode]
) -> FakeNode | None:
    known = {n.node_id for n in before.values()}
    fresh = [
        n for n in cluster.alive_workers() if n.node_type == node_type and n.node_id not in known
    ]
    return fresh[0] if fresh else None


# ---------------------------------------------------------------- the pipeline

_PIPELINE = textwrap.dedent(
    """
    import json, sys, time
    import ray

    address, rows = sys.argv[1], int(sys.argv[2])
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False

    def slow(row):
        time.sleep(0.5)
        return row

    seen, errors, told = 0, [], False
    try:
        data = ray.data.range(rows, override_num_blocks=rows).map(slow, num_cpus=1)
        for batch in data.iter_batches(batch_size=1, prefetch_batches=0):
            seen += len(batch["id"])
            if not told:
                try:  # the requester the responder has to live with
                    ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
                except ValueError:
                    continue
                print("RUNNING", flush=True)
                told = True
    except Exception as exc:
        errors.append(repr(exc)[:300])
    print("DONE " + json.dumps({"rows": seen, "errors": errors}), flush=True)
    """
)


class _Pipeline:
    """A Ray Data job in a driver subprocess: ROWS one-CPU rows of 0.5 s each."""

    def __init__(self, cluster: FakeAutoscalingCluster, workdir: Path) -> None:
        script = workdir / "pipeline.py"
        script.write_text(_PIPELINE)
        self._log = workdir / "pipeline.log"
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        with open(self._log, "w", encoding="utf-8") as stderr:
            self._proc = subprocess.Popen(
                [sys.executable, str(script), cluster.gcs_address, str(ROWS)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
            )

    def __enter__(self) -> _Pipeline:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("RUNNING"):
            self._end()
            pytest.fail(f"the pipeline did not start: {line}\n{self._log.read_text()[-3000:]}")
        return self

    def finish(self, timeout_s: float) -> dict[str, Any]:
        stdout, _ = self._proc.communicate(timeout=timeout_s)
        done = [line for line in stdout.splitlines() if line.startswith("DONE ")]
        assert done, f"{stdout}\n{self._log.read_text()[-3000:]}"
        result: dict[str, Any] = json.loads(done[-1].removeprefix("DONE "))
        return result

    def __exit__(self, *exc: object) -> None:
        self._end()

    def _end(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()
