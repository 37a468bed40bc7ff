"""Replacement capacity through a burst of interruptions: two in one batch, a third a minute later.

On the real Ray autoscaler (fake_multinode provider; v2 as `ray up` starts it on Ray 2.60,
then v1), three busy spot workers: A (`x86_spot_worker`), B (`arm_spot_worker`) and C
(`x86_spot_worker_2`, the other x86 spot pool, at its `max_workers` 1 with C).

WHEN A's and B's warnings come in one batch, THEN each gets its replacement before it is
killed at its termination time: B's in the other arm spot pool, A's on demand (its other
spot pool is full). WHEN a minute later C is warned, THEN its replacement does not come
from A's pool, interrupted a minute ago and free again, but on demand, and joins before C is
killed. No node of an interrupted pool is launched behind the responder's back, and the
`terminated` state changes release every request.

Printed: per notice, the replacement's join time and its lead (joined -> victim killed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ray_hooks.replacement import ARM64, ON_DEMAND, SPOT, X86_64
from spot_responder.cli.autoscaled import FAST_HEALTH_CHECKS
from tests.autoscaler_cluster import (
    SPOT_NOTICE_WINDOW_S,
    V1,
    FakeAutoscalingCluster,
    FakeNode,
    WorkerType,
    fake_autoscaling_cluster,
    replay_events,
    request_of_the_cluster,
    send_demand,
)
from tests.support import load_event

pytestmark = [pytest.mark.ray, pytest.mark.autoscaler]

INSTANCE_A = "i-0a1b2c3d4e5f6001a"
INSTANCE_B = "i-0a1b2c3d4e5f6001b"
INSTANCE_C = "i-0a1b2c3d4e5f6001c"
WORKER_TYPES = (
    WorkerType("x86_spot_worker", SPOT, X86_64, instance_id=INSTANCE_A),
    WorkerType("arm_spot_worker", SPOT, ARM64, instance_id=INSTANCE_B),
    WorkerType("x86_spot_worker_2", SPOT, X86_64, instance_id=INSTANCE_C),
    WorkerType("arm_spot_worker_2", SPOT, ARM64),
    WorkerType("x86_ondemand_worker", ON_DEMAND, X86_64, max_workers=2),
    WorkerType("arm_ondemand_worker", ON_DEMAND, ARM64),
)
WARNED = ("x86_spot_worker", "arm_spot_worker", "x86_spot_worker_2")
BATCH_AHEAD_S = 50  # from the batch of two to EC2's termination
THIRD_AFTER_S = 60  # the third warning, after the batch
THIRD_AHEAD_S = 50  # a fake node takes 20-30 s to join on a busy two-core machine
JOIN_TIMEOUT_S = 90


@pytest.fixture(scope="module", params=["v2", V1])
def cluster(request: pytest.FixtureRequest) -> Iterator[FakeAutoscalingCluster]:
    with fake_autoscaling_cluster(
        worker_types=WORKER_TYPES,
        autoscaler_v2=request.param == "v2",
        max_workers=6,  # v1 counts draining nodes: room for the replacements beside them
        idle_timeout_minutes=0.5,
        include_dashboard=True,  # the impact analysis of `respond` reads the state API
        extra_env=FAST_HEALTH_CHECKS,
    ) as started:
        yield started


def test_two_in_a_batch_then_a_third_each_replaced_before_the_kill_never_in_a_hit_pool(
    cluster: FakeAutoscalingCluster, tmp_path: Path
) -> None:
    # GIVEN three busy spot workers, C's pool at its max_workers
    before = _bring_up(cluster)
    ledger = tmp_path / "ledger.sqlite3"
    version = "v2" if cluster.autoscaler_v2 else "v1"
    with _Job(cluster, before, tmp_path) as job:
        send_demand(cluster, [])

        # WHEN A's and B's warnings come in one batch
        batch_at = time.time()
        termination = float(int(batch_at) + BATCH_AHEAD_S)
        known = {n.node_id for n in cluster.nodes()}  # before the replay: a fast join is no miss
        notices = _replay_warnings(cluster, tmp_path, ledger, termination, (INSTANCE_A, INSTANCE_B))

        # THEN B's replacement is asked in the other arm spot pool, A's on demand
        asked = {n["instance_id"]: n["replacement"] for n in notices}
        assert [n["action"] for n in notices] == ["drained", "drained"], notices
        assert _status_and_type(asked[INSTANCE_B]) == ("requested", "arm_spot_worker_2")
        assert _status_and_type(asked[INSTANCE_A]) == ("requested", "x86_ondemand_worker")
        assert "x86_spot_worker_2 (at its max_workers 1" in asked[INSTANCE_A]["reason"]

        # AND both join before A and B are killed at the termination time
        wanted = {"arm_spot_worker_2": 1, "x86_ondemand_worker": 1}
        joined = _wait_for_new(cluster, wanted, known, termination)
        killed_at = _kill_at(
            cluster, termination, before["x86_spot_worker"], before["arm_spot_worker"]
        )
        job.stop("x86_spot_worker", "arm_spot_worker")  # their retried work ends at once
        _assert_joined_before(joined, killed_at, version, "batch")

        # WHEN a minute after the batch C is warned
        time.sleep(max(0.0, batch_at + THIRD_AFTER_S - time.time()))
        third_termination = float(int(time.time()) + THIRD_AHEAD_S)
        known = {n.node_id for n in cluster.nodes()}
        (third,) = _replay_warnings(cluster, tmp_path, ledger, third_termination, (INSTANCE_C,))

        # THEN its replacement skips A's pool, hit a minute ago and empty again: on demand
        replacement = third["replacement"]
        assert _status_and_type(replacement) == ("requested", "x86_ondemand_worker"), replacement
        assert "skipped x86_spot_worker (" in replacement["reason"], replacement["reason"]
        joined_c = _wait_for_new(cluster, {"x86_ondemand_worker": 1}, known, third_termination)
        third_killed_at = _kill_at(cluster, third_termination, before["x86_spot_worker_2"])
        job.stop("x86_spot_worker_2")
        _assert_joined_before(joined_c, third_killed_at, version, "third")

        # AND no interrupted pool was refilled behind the responder's back
        launched = sorted(n.node_type for n in cluster.nodes() if n.start_time_ms / 1000 > batch_at)
        assert launched == ["arm_spot_worker_2", "x86_ondemand_worker", "x86_ondemand_worker"]

        # WHEN EC2's `terminated` state changes are replayed (EC2 sends them once the
        # instances are gone: Ray has booked the three deaths by then), THEN every request
        # is released
        warned_ids = {before[name].node_id for name in WARNED}
        cluster.wait_for(
            lambda: not any(n.alive for n in cluster.nodes() if n.node_id in warned_ids),
            60,
            "Ray to book the three deaths",
        )
        gone = _replay_terminated(cluster, tmp_path, ledger, (INSTANCE_A, INSTANCE_B, INSTANCE_C))
        assert request_of_the_cluster(cluster) == [], gone
        outcome = job.finish(timeout_s=60)
        assert outcome["errors"] == [], outcome


# ---------------------------------------------------------------- steps


def _status_and_type(replacement: dict[str, Any]) -> tuple[str, str | None]:
    return replacement["status"], replacement["node_type"]


def _bring_up(cluster: FakeAutoscalingCluster) -> dict[str, FakeNode]:
    send_demand(
        cluster, [{"resources": {"CPU": 1.0, name: 1.0}, "label_selector": {}} for name in WARNED]
    )

    def up() -> bool:
        return set(WARNED) <= {n.node_type for n in cluster.alive_workers()}

    try:
        cluster.wait_for(up, JOIN_TIMEOUT_S, f"nodes of {WARNED}")
    except TimeoutError:
        pytest.fail(f"the workers did not come up; autoscaler log:\n{cluster.monitor_log()}")
    return {n.node_type: n for n in cluster.alive_workers()}


def _wait_for_new(
    cluster: FakeAutoscalingCluster, wanted: dict[str, int], known: set[str], until: float
) -> list[FakeNode]:
    """New nodes (not in `known`) of the wanted types (type -> how many), until `until`."""
    fresh: list[FakeNode] = []
    while time.time() < until:
        fresh = [n for n in cluster.alive_workers() if n.node_id not in known]
        counts = {t: sum(n.node_type == t for n in fresh) for t in wanted}
        if all(counts[t] >= wanted[t] for t in wanted):
            return fresh
        time.sleep(0.25)
    pytest.fail(
        f"not every replacement of {wanted} joined before the kill: {[n.node_type for n in fresh]}"
        f"\nautoscaler log:\n{cluster.monitor_log()}"
    )


def _kill_at(cluster: FakeAutoscalingCluster, termination: float, *victims: FakeNode) -> float:
    """SIGKILL the victims at the termination time, as EC2 takes a spot instance."""
    time.sleep(max(0.0, termination - time.time()))
    killed_at = time.time()
    for victim in victims:
        assert cluster.kill_node(victim.node_id) is not None, victim.node_type
    return killed_at


def _assert_joined_before(
    joined: list[FakeNode], killed_at: float, version: str, what: str
) -> None:
    for node in joined:
        lead = killed_at - node.start_time_ms / 1000
        print(f"\n{version} {what}: {node.node_type} joined; lead (joined -> killed) {lead:.1f} s")
        assert lead > 0, node


def _replay_warnings(
    cluster: FakeAutoscalingCluster,
    tmp_path: Path,
    ledger: Path,
    termination: float,
    instances: tuple[str, ...],
) -> list[dict[str, Any]]:
    sent = datetime.fromtimestamp(termination - SPOT_NOTICE_WINDOW_S, tz=UTC)
    events = []
    for instance in instances:
        event = load_event("spot-interruption-terminate.json")
        event["id"] = f"burst-{instance}-{tmp_path.name}"
        event["time"] = sent.strftime("%Y-%m-%dT%H:%M:%SZ")
        event["detail"]["instance-id"] = instance
        events.append(event)
    return replay_events(cluster, tmp_path, ledger, events, keep_time=True)


def _replay_terminated(
    cluster: FakeAutoscalingCluster, tmp_path: Path, ledger: Path, instances: tuple[str, ...]
) -> list[dict[str, Any]]:
    events = []
    for instance in instances:
        event = load_event("state-change-terminated.json")
        event["id"] = f"gone-{instance}-{tmp_path.name}"
        event["detail"]["instance-id"] = instance
        events.append(event)
    return replay_events(cluster, tmp_path, ledger, events, keep_time=False)


# ---------------------------------------------------------------- the job

_JOB = textwrap.dedent(
    """
    import json, os, sys, time
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    address, stop, nodes = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

    @ray.remote(num_cpus=1)
    def work(stop):
        while not os.path.exists(stop):
            time.sleep(0.2)
        return ray.get_runtime_context().get_node_id()

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    refs = [  # free to move once their node is taken (soft)
        work.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=True))
        .remote(f"{stop}-{name}")
        for node_id, name in nodes
    ]
    while ray.available_resources().get("CPU", 0) > 0:
        time.sleep(0.2)
    print("RUNNING", flush=True)
    errors = []
    for ref in refs:
        try:
            ray.get(ref, timeout=300)
        except Exception as exc:
            errors.append(repr(exc)[:200])
    print("DONE " + json.dumps({"errors": errors}), flush=True)
    """
)


class _Job:
    """A Ray driver job in a subprocess: one 1-CPU task per warned node, each working until
    `stop(node type)`; a task whose node is killed is retried elsewhere by Ray."""

    def __init__(
        self, cluster: FakeAutoscalingCluster, nodes: dict[str, FakeNode], workdir: Path
    ) -> None:
        script = workdir / "job.py"
        script.write_text(_JOB)
        self._stop = workdir / "stop"
        self._log = workdir / "job.log"
        placement = [(nodes[name].node_id, name) for name in WARNED]
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        command = [sys.executable, str(script), cluster.gcs_address, str(self._stop)]
        with open(self._log, "w", encoding="utf-8") as stderr:
            self._proc = subprocess.Popen(
                [*command, json.dumps(placement)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
            )

    def __enter__(self) -> _Job:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("RUNNING"):
            self._end()
            pytest.fail(f"the job did not start: {line}\n{self._log.read_text()[-3000:]}")
        return self

    def stop(self, *names: str) -> None:
        for name in names:
            Path(f"{self._stop}-{name}").touch()

    def finish(self, timeout_s: float) -> dict[str, Any]:
        for name in WARNED:
            self.stop(name)
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
