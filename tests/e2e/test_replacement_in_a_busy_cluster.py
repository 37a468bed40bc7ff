"""Replacement capacity in a cluster as it really runs: not from zero, every candidate busy.

On the real Ray autoscaler (fake_multinode provider), v2 as `ray up` starts it on Ray 2.60
and v1, one cluster each. Four busy workers before the warnings:

- `x86_spot_worker` (instance A) and `arm_spot_worker` (instance B), the two warned;
- `x86_spot_worker_2`, the only candidate for A (the other zone's spot pool; max 2), busy:
  a request of one bundle per replacement would be met by this node and launch nothing;
- `arm_ondemand_worker`, the only candidate for B, busy and at its `max_workers` (1).

WHEN both warnings come in one batch (the Lambda's code, `spot-responder replay`), THEN A's
replacement joins before A is killed at its termination time, B's is `no-replacement` with
the reason in the ledger and holds nothing back (v2 treats its one constraint all or
nothing), no node of the interrupted pools is launched behind the responder's back, and
after EC2's `terminated` state changes `ray status` shows no request of the responder's and
the cluster goes back to its size (no worker once the job ended) within the idle timeout.

Printed: the lead time (replacement joined -> warned node killed) and the join time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ray_hooks.replacement import ARM64, ON_DEMAND, SPOT, X86_64
from spot_responder.cli.autoscaled import FAST_HEALTH_CHECKS
from tests.autoscaler_cluster import (
    SPOT_NOTICE_WINDOW_S,
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

INSTANCE_A = "i-0a1b2c3d4e5f6000a"
INSTANCE_B = "i-0a1b2c3d4e5f6000b"
WORKER_TYPES = (
    WorkerType("x86_spot_worker", SPOT, X86_64, instance_id=INSTANCE_A),
    WorkerType("arm_spot_worker", SPOT, ARM64, instance_id=INSTANCE_B),
    WorkerType("x86_spot_worker_2", SPOT, X86_64, max_workers=2),
    WorkerType("arm_ondemand_worker", ON_DEMAND, ARM64, max_workers=1),
)
BUSY_TYPES = tuple(w.name for w in WORKER_TYPES)
IDLE_TIMEOUT_MINUTES = 0.5  # 30 s: v1 judges idleness from load reports, late on a busy machine
SAFETY_MARGIN_S = 5
TERMINATION_AHEAD_S = 60  # from the moment the work runs to EC2's termination
JOIN_TIMEOUT_S = 90
SETTLED_S = 8  # longer than a v1 update and a fake node's start
STOP_BEFORE_KILL_S = 1  # the tasks poll their stop file every 0.2 s; the nodes live at the kill


@pytest.fixture(scope="module", params=["v2", "v1"])
def cluster(request: pytest.FixtureRequest) -> Iterator[FakeAutoscalingCluster]:
    with fake_autoscaling_cluster(
        worker_types=WORKER_TYPES,
        autoscaler_v2=request.param == "v2",
        max_workers=6,  # v1 counts the draining nodes: room for the one replacement there too
        idle_timeout_minutes=IDLE_TIMEOUT_MINUTES,
        include_dashboard=True,  # the impact analysis of `respond` reads the state API
        extra_env=FAST_HEALTH_CHECKS,
    ) as started:
        yield started


def test_in_a_busy_cluster_the_replacement_joins_before_the_kill_and_a_full_type_blocks_nothing(
    cluster: FakeAutoscalingCluster, tmp_path: Path
) -> None:
    # GIVEN a node of every type, each busy with a job until after the termination time
    before = _bring_up(cluster, BUSY_TYPES)
    with _Job(cluster, before, tmp_path) as job:
        _clear_requests(cluster)
        _settle(cluster, BUSY_TYPES)
        termination = float(int(time.time()) + TERMINATION_AHEAD_S)

        # WHEN both warnings arrive in one batch, EC2 terminating both at `termination`
        ledger = tmp_path / "ledger.sqlite3"
        asked_at = time.time()
        notices = _replay_warnings(cluster, tmp_path, ledger, termination)

        # THEN both nodes are drained; A's replacement is asked in the other spot pool...
        by_instance = {n["instance_id"]: n for n in notices}
        assert [n["action"] for n in notices] == ["drained", "drained"], [
            (n["action"], n.get("reason")) for n in notices
        ]
        a, b = by_instance[INSTANCE_A]["replacement"], by_instance[INSTANCE_B]["replacement"]
        assert (a["status"], a["node_type"]) == ("requested", "x86_spot_worker_2"), a
        # ... and B's is not asked, the ledger says why: its only candidate is at max_workers
        assert b["status"] == "no-replacement", b
        assert "arm_ondemand_worker (at its max_workers 1: 1 node(s) counted" in b["reason"], b
        assert "from request_resources" in _ray_status(cluster)

        # AND a second x86_spot_worker_2 joins beside the busy one, before A is killed
        replacement = _wait_for_new(cluster, "x86_spot_worker_2", before, termination)
        # the work ends just before EC2 comes: a task retried after the kill would be demand of
        # the user's own that the autoscaler may meet with any type, the interrupted pools too
        time.sleep(max(0.0, termination - STOP_BEFORE_KILL_S - time.time()))
        job.stop()
        time.sleep(max(0.0, termination - time.time()))
        killed_at = time.time()
        # (a node already gone has left before EC2 came: v1 may end a draining node itself)
        gone_before = [
            node_type
            for node_type in ("x86_spot_worker", "arm_spot_worker")
            if cluster.kill_node(before[node_type].node_id) is None
        ]
        if gone_before:
            print(f"\nleft before the kill: {gone_before}")
        if replacement is None:
            pytest.fail(f"no replacement before the kill; autoscaler log:\n{cluster.monitor_log()}")
        joined_at = replacement.start_time_ms / 1000
        assert joined_at < killed_at
        print(
            f"\n{'v2' if cluster.autoscaler_v2 else 'v1'}: replacement joined "
            f"{joined_at - asked_at:.1f} s after the replay started; lead (joined -> killed) "
            f"{killed_at - joined_at:.1f} s"
        )

        # AND nothing else was launched: the interrupted pools were not refilled
        cluster.wait_for(lambda: _dead(cluster, before), 60, "the killed nodes dead")
        launched = [n.node_type for n in cluster.nodes() if n.start_time_ms / 1000 > asked_at]
        assert launched == ["x86_spot_worker_2"], launched

        # WHEN EC2's `terminated` state changes for both instances are replayed
        gone = _replay_terminated(cluster, tmp_path, ledger)
        released_at = time.time()
        assert {n["instance_id"] for n in gone} == {INSTANCE_A, INSTANCE_B}, gone

        # THEN the responder's request is released: `ray status` shows none of it
        assert "from request_resources" not in _ray_status(cluster)
        assert request_of_the_cluster(cluster) == []
        outcome = job.finish(timeout_s=60)
        assert outcome["errors"] == [], outcome

    # AND once the job is done the cluster goes back to its size: every idle worker removed
    cluster.wait_for(lambda: not cluster.alive_workers(), 120, "idle workers removed")
    print(f"back to its size {time.time() - released_at:.1f} s after the release")


# ---------------------------------------------------------------- steps


def _bring_up(cluster: FakeAutoscalingCluster, types: tuple[str, ...]) -> dict[str, FakeNode]:
    """One node of each type (asked by its marker resource); waits until all are alive."""
    send_demand(
        cluster, [{"resources": {"CPU": 1.0, name: 1.0}, "label_selector": {}} for name in types]
    )

    def up() -> bool:
        return set(types) <= {n.node_type for n in cluster.alive_workers()}

    try:
        cluster.wait_for(up, JOIN_TIMEOUT_S, f"nodes of {types}")
    except TimeoutError:
        pytest.fail(f"the workers did not come up; autoscaler log:\n{cluster.monitor_log()}")
    _settle(cluster, types)
    return {n.node_type: n for n in cluster.alive_workers()}


def _settle(cluster: FakeAutoscalingCluster, types: tuple[str, ...]) -> None:
    """Until exactly one node of each type has been alive for SETTLED_S on end.

    v1 judges from load reports that lag: while nodes register, or while the job's tasks are
    being placed, it may launch one node too many. Only that one is idle, so only it idles
    out, and the cluster is then as the scenario describes it.
    """
    since: list[float] = []

    def settled() -> bool:
        counts = Counter(n.node_type for n in cluster.alive_workers())
        if not all(counts[name] == 1 for name in types):
            since.clear()
            return False
        since[:] = since or [time.monotonic()]
        return time.monotonic() - since[0] >= SETTLED_S

    try:
        cluster.wait_for(settled, IDLE_TIMEOUT_MINUTES * 60 + 90, "one node of each type")
    except TimeoutError:
        pytest.fail(f"the cluster did not settle; autoscaler log:\n{cluster.monitor_log()}")


def _clear_requests(cluster: FakeAutoscalingCluster) -> None:
    send_demand(cluster, [])


def _ray_status(cluster: FakeAutoscalingCluster) -> str:
    """`ray status` as a user runs it on the head; the request part is what matters here."""
    if not cluster.autoscaler_v2:  # v1's status does not show the request: read it instead
        request = request_of_the_cluster(cluster)
        return "from request_resources" if request else ""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("ray")), "status", "--address", cluster.gcs_address],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _replay_warnings(
    cluster: FakeAutoscalingCluster, tmp_path: Path, ledger: Path, termination: float
) -> list[dict[str, Any]]:
    sent = datetime.fromtimestamp(termination - SPOT_NOTICE_WINDOW_S, tz=UTC)
    events = []
    for instance in (INSTANCE_A, INSTANCE_B):
        event = load_event("spot-interruption-terminate.json")
        event["id"] = f"busy-{instance}-{tmp_path.name}"
        event["time"] = sent.strftime("%Y-%m-%dT%H:%M:%SZ")
        event["detail"]["instance-id"] = instance
        events.append(event)
    return replay_events(
        cluster, tmp_path, ledger, events, keep_time=True, safety_margin_s=SAFETY_MARGIN_S
    )


def _replay_terminated(
    cluster: FakeAutoscalingCluster, tmp_path: Path, ledger: Path
) -> list[dict[str, Any]]:
    events = []
    for instance in (INSTANCE_A, INSTANCE_B):
        event = load_event("state-change-terminated.json")
        event["id"] = f"gone-{instance}-{tmp_path.name}"
        event["detail"]["instance-id"] = instance
        events.append(event)
    return replay_events(
        cluster, tmp_path, ledger, events, keep_time=False, safety_margin_s=SAFETY_MARGIN_S
    )


def _wait_for_new(
    cluster: FakeAutoscalingCluster, node_type: str, before: dict[str, FakeNode], until: float
) -> FakeNode | None:
    """A node of the type that was not there before, watched for until `until` (wall clock)."""
    known = {n.node_id for n in before.values()}
    while time.time() < until:
        alive = cluster.alive_workers()
        fresh = [n for n in alive if n.node_type == node_type and n.node_id not in known]
        if fresh:
            return fresh[0]
        time.sleep(0.25)
    return None


def _dead(cluster: FakeAutoscalingCluster, before: dict[str, FakeNode]) -> bool:
    warned = {before["x86_spot_worker"].node_id, before["arm_spot_worker"].node_id}
    return not any(n.alive for n in cluster.nodes() if n.node_id in warned)


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
    # the warned nodes' work may move (soft); the others' stays where it is
    refs = [
        work.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=warned)
        ).remote(stop)
        for node_id, warned in nodes
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
    """A Ray driver job in a subprocess: one 1-CPU task per node, working until `stop()`."""

    def __init__(
        self, cluster: FakeAutoscalingCluster, nodes: dict[str, FakeNode], workdir: Path
    ) -> None:
        warned = {"x86_spot_worker", "arm_spot_worker"}
        placement = [(node.node_id, name in warned) for name, node in nodes.items()]
        script = workdir / "job.py"
        script.write_text(_JOB)
        self._stop = workdir / "stop"
        self._log = workdir / "job.log"
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

    def stop(self) -> None:
        self._stop.touch()

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
