"""A spot warning replayed through the Lambda's code, on the real Ray autoscaler (GitHub issue 4).

The whole path, end to end: an EventBridge spot warning → `spot-responder replay` (the
Lambda's own handler code; instance facts from the Ray node labels) → `ray_hooks respond`
on the head → the drain and a capacity request → the real autoscaler v2 (fake_multinode
provider, no Docker) launches the replacement → the warned node is killed at its
termination time → the job's pending work completes → `ray_hooks reconcile` releases the
request → the autoscaler removes what is idle.

The cluster: the production node types plus a second x86 spot pool (`x86_spot_worker_2`);
the one `x86_spot_worker` node is instance i-0a1b2c3d4e5f60001. `max_workers` is 1: the
job's pending tasks cannot bring a node of their own. On autoscaler v2 a draining node
no longer counts toward `max_workers` (its instance goes to RAY_STOPPING), which leaves
room for exactly one node while the warned node lives: the replacement the responder
asked for. The drain frees that room a moment before the capacity request lands; in
every run so far the autoscaler saw the request first. Should it ever launch a node of
its own choice for the pending tasks instead, the node type asserted here differs, and
that is a finding about the product, not noise.

The workload is a driver job in a subprocess: a task keeps the warned node busy until
after its termination time, and 1-CPU x86 tasks wait for capacity the cluster without
the node does not have (the head has no CPU). At the notice's real termination time the
warned node is killed the way EC2 ends an instance: SIGKILL to its raylet and the
processes under it (found by the raylet's `--node_id`), nothing else of the cluster.

The two scenarios share one cluster; each starts without workers and ends without them.
They print the lead time (replacement joined → warned node killed) and the time from the
capacity request to the replacement joining.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ray_hooks.capacity import JOINED, NO_REPLACEMENT, REQUESTED, ReplacementAsk
from ray_hooks.capacity import request_replacements as head_request_replacements
from ray_hooks.replacement import ON_DEMAND, SPOT, SPOT_ONLY, X86_64, Pool, ReplacementOptions
from tests.autoscaler_cluster import (
    PRODUCTION_WORKER_TYPES,
    FakeAutoscalingCluster,
    FakeNode,
    WorkerType,
    fake_autoscaling_cluster,
    replay_warning,
)
from tests.ray_hooks_support import run_ray_hooks
from tests.support import spot_responder

pytestmark = [pytest.mark.ray, pytest.mark.autoscaler]

WARNED_INSTANCE = "i-0a1b2c3d4e5f60001"
WARNED_TYPE = "x86_spot_worker"
OTHER_SPOT_TYPE = "x86_spot_worker_2"
ON_DEMAND_TYPE = "x86_ondemand_worker"
WORKER_TYPES = (
    WorkerType(WARNED_TYPE, SPOT, X86_64, instance_id=WARNED_INSTANCE),
    *PRODUCTION_WORKER_TYPES[1:],
    WorkerType(OTHER_SPOT_TYPE, SPOT, X86_64),
)
IDLE_TIMEOUT_MINUTES = 0.1  # 6 s: a released replacement visibly goes away
SAFETY_MARGIN_S = 5
#: The real termination lies this far after the busy task is sent (the replay follows at once).
TERMINATION_AHEAD_S = 28
PENDING_TASKS = 4  # 1 CPU, 1 s each: more than what remains once the warned node is gone
JOIN_TIMEOUT_S = 90
WORKLOAD_TIMEOUT_S = 90
IDLE_REMOVAL_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def cluster() -> Iterator[FakeAutoscalingCluster]:
    with fake_autoscaling_cluster(
        worker_types=WORKER_TYPES,
        max_workers=1,  # a draining node does not count (see the module docstring)
        idle_timeout_minutes=IDLE_TIMEOUT_MINUTES,
        include_dashboard=True,  # the impact analysis of `respond` asks the state API
    ) as started:
        yield started


@pytest.fixture
def gcs(cluster: FakeAutoscalingCluster) -> Any:
    """A GcsClient as `ray_hooks` makes it, on a cluster without workers."""
    from ray_hooks.cluster import connect

    cluster.wait_for(lambda: not cluster.alive_workers(), 90, "no workers left")
    return connect(cluster.gcs_address)


def test_replayed_warning_brings_the_other_spot_pool_before_the_node_dies_then_releases_it(
    cluster: FakeAutoscalingCluster, gcs: Any, tmp_path: Path
) -> None:
    run = _warn_and_kill(cluster, tmp_path)

    # THEN the policy's choice was the other x86 spot pool, and that node replaced the warned one
    assert (run.asked["node_type"], run.asked["market"]) == (OTHER_SPOT_TYPE, SPOT), run.asked
    assert run.replacement.labels["ray.io/market-type"] == SPOT
    _assert_replaced_in_time_then_released(cluster, run)


def test_with_the_other_spot_pool_recently_interrupted_an_on_demand_x86_node_replaces_it(
    cluster: FakeAutoscalingCluster, gcs: Any, tmp_path: Path
) -> None:
    # GIVEN the head remembers the other x86 spot pool as interrupted 5 minutes ago
    _remember_interrupted(gcs, cluster.config_path, OTHER_SPOT_TYPE, minutes_ago=5)

    run = _warn_and_kill(cluster, tmp_path)

    # THEN an on-demand node of the same architecture was asked for and replaced the warned one
    assert (run.asked["node_type"], run.asked["market"]) == (ON_DEMAND_TYPE, ON_DEMAND), run.asked
    assert f"{OTHER_SPOT_TYPE} (unavailable in every zone)" in run.asked["reason"]
    assert run.replacement.labels["ray.io/market-type"] == ON_DEMAND
    assert run.replacement.labels["spot-responder/arch"] == X86_64
    _assert_replaced_in_time_then_released(cluster, run)


# ---------------------------------------------------------------- the scenario


@dataclass(frozen=True)
class WarnedAndKilled:
    """What happened between the warning and the kill, as measured."""

    started_at: float  # wall clock: the scenario began (no workers then)
    warned: FakeNode
    notice: dict[str, Any]  # the replay's JSON for the notice (a ledger entry)
    asked: dict[str, Any]  # the head's capacity request, as the ledger keeps it
    replacement: FakeNode
    replacement_seen_at: float | None  # wall clock: first seen alive by this test
    ahead_at_replay_s: float  # termination time - replay start
    killed_at: float  # wall clock
    workload: dict[str, Any]  # the driver's last report
    ledger: Path


def _warn_and_kill(cluster: FakeAutoscalingCluster, tmp_path: Path) -> WarnedAndKilled:
    # GIVEN the warned x86 spot node, kept busy by a driver job
    started_at = time.time()
    warned = _bring_up_the_warned_node(cluster)
    with _Driver(cluster.gcs_address, tmp_path) as driver:
        termination = float(int(time.time()) + TERMINATION_AHEAD_S)
        driver.send("busy", warned.node_id, termination + 3)
        driver.expect("busy")
        # AND the job has more 1-CPU x86 tasks pending than the cluster without the node can run
        driver.send("pending", PENDING_TASKS)
        driver.expect("submitted")

        # WHEN its spot interruption warning is replayed, the termination ~30 s ahead
        ledger = tmp_path / "ledger.sqlite3"
        ahead = termination - time.time()
        notice = _replay(cluster, tmp_path, ledger, termination)
        assert (notice["action"], notice["ray_node_id"]) == ("drained", warned.node_id), notice
        assert [job["tasks_running"] for job in notice["impacted_jobs"]] == [1], notice
        asked = notice["replacement"]
        assert asked is not None, notice
        assert asked["status"] == REQUESTED, asked

        # AND at the termination time the instance is gone: its raylet is killed
        replacement, seen_at = _wait_for_replacement(cluster, asked["node_type"], termination)
        killed_at = cluster.kill_node(warned.node_id)
        assert killed_at is not None, "the warned node's raylet ended before its termination"
        if replacement is None:
            pytest.fail(
                f"no {asked['node_type']} node joined before the warned node was killed "
                f"({asked['reason']}); autoscaler log:\n{cluster.monitor_log()}"
            )
        workload = driver.expect("done", WORKLOAD_TIMEOUT_S)
    return WarnedAndKilled(
        started_at=started_at,
        warned=warned,
        notice=notice,
        asked=asked,
        replacement=replacement,
        replacement_seen_at=seen_at,
        ahead_at_replay_s=ahead,
        killed_at=killed_at,
        workload=workload,
        ledger=ledger,
    )


def _assert_replaced_in_time_then_released(
    cluster: FakeAutoscalingCluster, run: WarnedAndKilled
) -> None:
    replacement = run.replacement
    joined_at = replacement.start_time_ms / 1000
    requested_at = datetime.fromisoformat(run.asked["requested_at"]).timestamp()

    # the replacement joined before the warned node was killed
    assert run.replacement_seen_at is not None
    assert joined_at < run.replacement_seen_at < run.killed_at
    # the job's work all completed on the replacement, the killed task re-run there
    assert [node for node, _ in run.workload["pending"]] == [replacement.node_id] * PENDING_TASKS
    busy_node, busy_started = run.workload["busy"]
    assert (busy_node, busy_started > run.killed_at) == (replacement.node_id, True), run.workload
    # the GCS records the warned node dead of a preemption: killed after the drain deadline
    cluster.wait_for(
        lambda: _death(cluster, run.warned.node_id) is not None, 60, "the warned node dead"
    )
    reason, message, dead_at = _death(cluster, run.warned.node_id) or ("", "", 0.0)
    assert reason == "AUTOSCALER_DRAIN_PREEMPTED", message
    # the ledger kept the request as asked: outstanding
    (entry,) = _ledger_list(run.ledger)
    assert entry["status"] == "drained"
    assert (entry["replacement"]["status"], entry["replacement"]["node_type"]) == (
        REQUESTED,
        replacement.node_type,
    )

    # WHEN reconcile runs on the head THEN the request is released: its replacement joined
    reconciled = run_ray_hooks(
        "reconcile",
        "--address",
        cluster.gcs_address,
        stdin=json.dumps(
            {"version": 1, "operation": "reconcile", "cluster": "local", "request_id": "rec-4"}
        ),
    )
    assert reconciled.code == 0, reconciled.stderr
    released = reconciled.document["released"]
    assert [(r["status"], r["joined_node_id"]) for r in released] == [
        (JOINED, replacement.node_id)
    ], released
    assert reconciled.document["outstanding"] == []

    # AND the cluster returns to its size: the idle replacement is removed, nothing else joins
    gone_s = cluster.wait_for(
        lambda: not cluster.alive_workers(), IDLE_REMOVAL_TIMEOUT_S, "idle workers removed"
    )
    since = [n for n in cluster.nodes() if n.start_time_ms / 1000 >= run.started_at]
    assert sorted(n.node_id for n in since) == sorted([run.warned.node_id, replacement.node_id])
    print(
        f"\n{replacement.node_type}: termination {run.ahead_at_replay_s:.1f} s after the replay"
        f" started; request -> joined {joined_at - requested_at:.1f} s;"
        f" lead (joined -> warned node killed) {run.killed_at - joined_at:.1f} s;"
        f" job done {run.workload['at'] - run.killed_at:.1f} s after the kill;"
        f" GCS saw the warned node dead {dead_at - run.killed_at:.1f} s after the kill;"
        f" replacement removed {gone_s:.1f} s after reconcile"
    )


# ---------------------------------------------------------------- steps


def _bring_up_the_warned_node(cluster: FakeAutoscalingCluster) -> FakeNode:
    from ray.autoscaler.v2.sdk import request_cluster_resources

    marker = {"resources": {"CPU": 1.0, WARNED_TYPE: 1.0}, "label_selector": {}}
    request_cluster_resources(cluster.gcs_address, [marker])
    node = _wait_for_type(cluster, WARNED_TYPE, time.monotonic() + JOIN_TIMEOUT_S)
    if node is None:
        pytest.fail(f"no {WARNED_TYPE} node joined; autoscaler log:\n{cluster.monitor_log()}")
    assert node.labels["spot-responder/instance-id"] == WARNED_INSTANCE
    return node


def _remember_interrupted(gcs: Any, config_path: str, node_type: str, minutes_ago: int) -> None:
    """The head's own memory of an interruption of `node_type` (every zone) `minutes_ago`.

    Recorded the way the head recorded it then: a notice for a node of that type reached
    `request_replacements`. That notice wanted spot only, and the only other x86 spot pool
    was unavailable too, so nothing was asked of the autoscaler.
    """
    then = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    earlier = ReplacementAsk(
        notice_id="i-0a1b2c3d4e5f60009#spot-interruption",
        instance_id="i-0a1b2c3d4e5f60009",
        options=ReplacementOptions(SPOT_ONLY, (Pool(WARNED_TYPE),)),
        node_type=node_type,
    )
    (request,) = head_request_replacements(gcs, [earlier], config_path=config_path, now=then)
    assert request.status == NO_REPLACEMENT, request.reason


def _replay(
    cluster: FakeAutoscalingCluster, tmp_path: Path, ledger: Path, termination: float
) -> dict[str, Any]:
    """Replay the sample warning, its time set so that EC2 terminates at `termination`."""
    notice = replay_warning(
        cluster,
        tmp_path,
        termination,
        event_id=f"issue-4-{tmp_path.name}",
        safety_margin_s=SAFETY_MARGIN_S,
        ledger=ledger,
    )
    assert notice["instance_id"] == WARNED_INSTANCE, notice
    deadline = datetime.fromisoformat(notice["deadline"]).timestamp()
    assert deadline == pytest.approx(termination - SAFETY_MARGIN_S, abs=1)
    return notice


def _wait_for_replacement(
    cluster: FakeAutoscalingCluster, node_type: str, termination: float
) -> tuple[FakeNode | None, float | None]:
    """Watch for the replacement until the termination time; then wait no longer than that."""
    node = _wait_for_type(cluster, node_type, time.monotonic() + (termination - time.time()))
    seen_at = time.time() if node is not None else None
    time.sleep(max(0.0, termination - time.time()))
    return node, seen_at


def _wait_for_type(
    cluster: FakeAutoscalingCluster, node_type: str, until_monotonic: float
) -> FakeNode | None:
    while time.monotonic() < until_monotonic:
        alive = [n for n in cluster.alive_workers() if n.node_type == node_type]
        if alive:
            return alive[0]
        time.sleep(0.25)
    return None


def _death(cluster: FakeAutoscalingCluster, node_id: str) -> tuple[str, str, float] | None:
    """How and when the GCS says the node died (reason, message, wall clock), or None."""
    from ray._raylet import GcsClient
    from ray.core.generated import common_pb2

    for info in GcsClient(address=cluster.gcs_address).get_all_node_info(timeout=10).values():
        if bytes(info.node_id).hex() == node_id and info.state != 0:
            reason = common_pb2.NodeDeathInfo.Reason.Name(info.death_info.reason)
            return reason, str(info.death_info.reason_message), info.end_time_ms / 1000
    return None


def _ledger_list(ledger: Path) -> list[dict[str, Any]]:
    done = spot_responder("ledger", "list", "--json", "--ledger", str(ledger))
    assert done.returncode == 0, done.stderr
    entries: list[dict[str, Any]] = json.loads(done.stdout)
    return entries


# ---------------------------------------------------------------- the driver job

_DRIVER = textwrap.dedent(
    """
    import json, sys, time
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def say(what, **data):
        print("DRIVER " + json.dumps({"what": what, "at": time.time(), **data}), flush=True)

    @ray.remote(num_cpus=1)
    def busy(until):
        started = time.time()
        while time.time() < until:
            time.sleep(0.2)
        return [ray.get_runtime_context().get_node_id(), started]

    @ray.remote(num_cpus=1, label_selector={"spot-responder/arch": "x86_64"})
    def step(index):
        started = time.time()
        time.sleep(1)
        return [ray.get_runtime_context().get_node_id(), started]

    ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
    say("ready")
    running = None
    for line in sys.stdin:
        command, *args = json.loads(line)
        if command == "busy":
            node_id, until = args
            where = NodeAffinitySchedulingStrategy(node_id, soft=True)
            running = busy.options(scheduling_strategy=where).remote(until)
            while ray.available_resources().get("CPU", 0) > 0:
                time.sleep(0.2)
            say("busy")
        elif command == "pending":
            steps = [step.remote(i) for i in range(args[0])]
            say("submitted")
            pending = ray.get(steps, timeout=300)
            say("done", pending=pending, busy=ray.get(running, timeout=300))
            break
    ray.shutdown()
    """
)


class _Driver:
    """A Ray driver job in a subprocess, told what to do on stdin, reporting on stdout."""

    def __init__(self, address: str, tmp_path: Path) -> None:
        script = tmp_path / "driver.py"
        script.write_text(_DRIVER)
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        self._proc = subprocess.Popen(
            [sys.executable, str(script), address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def __enter__(self) -> _Driver:
        self.expect("ready", 60)
        return self

    def __exit__(self, *exc: object) -> None:
        """The driver disconnects before the test goes on (or is ended: it is ours)."""
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def send(self, *command: object) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()

    def expect(self, what: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            report: dict[str, Any] = json.loads(line)
            if report["what"] == what:
                return report
        output = "".join(self._output[-40:])
        pytest.fail(f"the driver did not report {what!r} in {timeout_s} s:\n{output}")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._output.append(line)
            if line.startswith("DRIVER "):
                self._lines.put(line.removeprefix("DRIVER "))
        self._lines.put(None)
