"""`spot-responder replay` without `--ray-address`: the whole story on a local cluster that
runs the real Ray autoscaler with the cluster bundle's own node types.

1. A head and two busy spot workers come up (fake provider): `x86_spot_worker`, which
   plays the instance of the sample warning, and `x86_spot_worker_2`, the other zone's
   pool, already running a job of its own (a cluster as it really runs, not from zero).
2. The events are replayed through the Lambda's own handler code. A spot warning is timed
   so that "EC2" terminates its instance `WINDOW_S` seconds later (not 120: a demo).
3. The responder drains the node, records the jobs' verdicts and asks for a replacement;
   the autoscaler launches it; the demo prints when it joined.
4. At the termination time the node is killed the way EC2 ends an instance (SIGKILL of
   its raylet and everything under it); the lead time is the replacement's head start.
5. The `terminated` state change is replayed: the head releases the capacity request.

Every run plays fresh instance ids (the events' ids are mapped to them), so one run never
meets an earlier run's ledger entries.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from spot_responder.cli.autoscaled import (
    HEAD_NODE_TYPE,
    INSTANCE_ID_LABEL,
    OBJECT_STORE_BYTES,
    AutoscaledLocalCluster,
    LocalNode,
)

log = logging.getLogger(__name__)

#: The sample events' instances and the bundle's node type that plays each.
WARNED_INSTANCE = "i-0a1b2c3d4e5f60001"
WARNED_TYPE = "x86_spot_worker"
BUSY_TYPE = "x86_spot_worker_2"  # the other zone's spot pool, busy before the warning
HEAD_INSTANCE = "i-0d0d0d0d0d0d0d0d0"
#: Seconds from the warning to the termination in the demo (EC2 gives 120).
WINDOW_S = 25.0
SPOT_WARNING_S = 120.0
MAX_WORKERS = 4  # raylets: head + 2 busy workers + the replacement (+1 spare)
_SPOT_WARNING = "EC2 Spot Instance Interruption Warning"
_RENDER_FLAGS = (
    *("--region", "us-west-2", "--stack-name", "local-demo"),
    *("--subnet", "subnet-0000000000000000a:us-west-2a"),
    *("--subnet", "subnet-0000000000000000b:us-west-2b"),
    *("--head-sg", "sg-00000000000000000", "--worker-sg", "sg-00000000000000000"),
    *("--head-instance-profile", "arn:aws:iam::000000000000:instance-profile/local-head"),
    *("--worker-instance-profile", "arn:aws:iam::000000000000:instance-profile/local-worker"),
)


def fresh_instance_id() -> str:
    """An EC2-style instance id of its own for one run."""
    return "i-0" + secrets.token_hex(8)


def bundle_node_types() -> dict[str, Any]:
    """The node types of the cluster bundle as `python -m ray_hooks.bundle.render` makes them."""
    rendered = subprocess.run(
        [sys.executable, "-m", "ray_hooks.bundle.render", *_RENDER_FLAGS, "-o", "-"],
        capture_output=True,
        text=True,
        check=False,
    )
    if rendered.returncode != 0:
        raise RuntimeError(f"cannot render the cluster bundle: {rendered.stderr.strip()}")
    types: dict[str, Any] = yaml.safe_load(rendered.stdout)["available_node_types"]
    return types


def local_node_types(bundle: Mapping[str, Any], plays: Mapping[str, str]) -> dict[str, Any]:
    """The bundle's types for the fake provider: 1 CPU per worker, at most two nodes per
    type; a type whose node plays an instance has that one node only (labels are per type).

    `plays`: node type -> the instance id its one node plays (its instance-id label).
    """
    types: dict[str, Any] = {}
    for name, spec in bundle.items():
        labels = {str(k): str(v) for k, v in (spec.get("labels") or {}).items()}
        priority = int(spec.get("priority", 0))
        if name == HEAD_NODE_TYPE:
            types[name] = {
                "resources": {"CPU": 0},
                "labels": labels,
                "node_config": {},
                "max_workers": 0,
                "priority": priority,
            }
            continue
        if name in plays:
            labels[INSTANCE_ID_LABEL] = plays[name]
        markers = {str(k): v for k, v in (spec.get("resources") or {}).items()}
        types[name] = {
            "resources": {**markers, "CPU": 1, "object_store_memory": OBJECT_STORE_BYTES},
            "labels": labels,
            "node_config": {},
            "min_workers": 0,
            "max_workers": 1 if name in plays else 2,
            "priority": priority,
        }
    return types


@dataclass
class Story:
    """What happened, for people (lines) and tests (figures)."""

    say: Callable[[str], None]
    started: float = field(default_factory=time.monotonic)
    figures: dict[str, Any] = field(default_factory=dict)

    def tell(self, line: str) -> None:
        self.say(f"[{time.monotonic() - self.started:5.1f} s] {line}")


@dataclass(frozen=True)
class DemoCluster:
    """The running cluster, who plays whom, and the work on it."""

    cluster: AutoscaledLocalCluster
    plays: Mapping[str, str]  # event instance id -> this run's instance id
    warned: LocalNode
    busy: LocalNode
    workload: DemoWorkload


def start(story: Story) -> tuple[AutoscaledLocalCluster, dict[str, str]]:
    """Start the head; return the cluster and the instance ids this run plays."""
    plays = {WARNED_INSTANCE: fresh_instance_id(), HEAD_INSTANCE: fresh_instance_id()}
    story.tell(
        "starting a local Ray cluster on the real autoscaler (v2, fake provider) with the "
        "cluster bundle's node types..."
    )
    types = local_node_types(bundle_node_types(), {WARNED_TYPE: plays[WARNED_INSTANCE]})
    cluster = AutoscaledLocalCluster(
        types,
        max_workers=MAX_WORKERS,
        idle_timeout_minutes=1.0,
        head_labels={INSTANCE_ID_LABEL: plays[HEAD_INSTANCE]},
    )
    return cluster, plays


def prepare(
    cluster: AutoscaledLocalCluster, plays: Mapping[str, str], story: Story
) -> tuple[DemoCluster, float]:
    """Bring up the two busy spot workers and put work on them; return the cluster and the
    termination time (wall clock) the warning will announce."""
    nodes = cluster.bring_up([WARNED_TYPE, BUSY_TYPE])
    warned = next(n for n in nodes if n.node_type == WARNED_TYPE)
    busy = next(n for n in nodes if n.node_type == BUSY_TYPE)
    workload = start_workload(cluster, warned, busy)
    cluster.clear_requests()  # from here on, only what the responder asks for
    termination = float(int(time.time() + WINDOW_S))
    story.tell(
        f"up: {WARNED_TYPE} node {warned.node_id[-5:]} plays {WARNED_INSTANCE} "
        f"(as {plays[WARNED_INSTANCE]} this run), {BUSY_TYPE} node {busy.node_id[-5:]} "
        "busy with a job of its own; sample job running"
    )
    return DemoCluster(cluster, plays, warned, busy, workload), termination


def demo_batch(
    paths: Sequence[Path], plays: Mapping[str, str], termination: float
) -> dict[str, Any]:
    """The events as SQS records, their instances mapped to this run's, spot warnings timed
    so that EC2 ends their instance at `termination` (wall clock), the others sent now."""
    from spot_responder.cli.replay_command import sqs_batch

    batch = sqs_batch(paths)
    for record in batch["Records"]:
        body = str(record["body"])
        for played, playing in plays.items():
            body = body.replace(played, playing)
        event = json.loads(body)
        if isinstance(event, dict):
            sent = datetime.now(UTC)
            if event.get("detail-type") == _SPOT_WARNING:
                sent = datetime.fromtimestamp(termination, UTC) - timedelta(seconds=SPOT_WARNING_S)
            event["time"] = sent.strftime("%Y-%m-%dT%H:%M:%SZ")
            event["id"] = str(uuid.uuid4())
            body = json.dumps(event)
        record["body"] = body
    return batch


def terminated_batch(instance_id: str) -> dict[str, Any]:
    """The state change EC2 sends once the instance is gone."""
    from spot_responder.cli.replay_command import _sqs_record

    event = {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "000000000000",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "us-west-2",
        "resources": [f"arn:aws:ec2:us-west-2:000000000000:instance/{instance_id}"],
        "detail": {"instance-id": instance_id, "state": "terminated"},
    }
    return {"Records": [_sqs_record(json.dumps(event))]}


def follow(demo: DemoCluster, termination: float, asked_at: float, story: Story) -> None:
    """After the warning: the replacement joining, the kill at termination, the release."""
    cluster = demo.cluster
    before = {n.node_id for n in cluster.nodes()}

    def replacement() -> LocalNode | None:
        fresh = [n for n in cluster.nodes() if n.alive and not n.is_head]
        return next((n for n in fresh if n.node_id not in before), None)

    try:
        cluster.wait_for(replacement, max(termination - time.time(), 1.0) + 15, "replacement")
    except TimeoutError:
        story.tell("no replacement joined before the termination")
    joined = replacement()
    if joined is not None:
        story.figures["replacement_type"] = joined.node_type
        story.figures["join_s"] = round(joined.started - asked_at, 1)
        beside = (
            f" (next to the busy {BUSY_TYPE} node that was already there)"
            if joined.node_type == BUSY_TYPE
            else ""
        )
        story.tell(
            f"replacement {joined.node_type} node {joined.node_id[-5:]} joined "
            f"{joined.started - asked_at:.1f} s after the warning was replayed{beside}"
        )
    time.sleep(max(0.0, termination - time.time()))
    killed = cluster.kill_node(demo.warned.node_id)
    instance = demo.plays[WARNED_INSTANCE]
    demo.workload.stop()  # the work ends; what ran on the killed node ends where it moved
    if killed is None:
        story.tell(f"{instance} had already left: its drained node finished its work and exited")
    elif joined is not None:
        lead = killed - joined.started
        story.figures["lead_s"] = round(lead, 1)
        story.tell(
            f"EC2 terminates {instance}: its node is killed {lead:.1f} s after the "
            "replacement joined (lead time)"
        )
    else:
        story.tell(f"EC2 terminates {instance}: its node is killed")
    cluster.wait_for(lambda: not _alive(cluster, demo.warned.node_id), 30, "the node's death")
    dead = next(n for n in cluster.nodes() if n.node_id == demo.warned.node_id)
    story.figures["death_reason"] = dead.death_reason
    story.tell(f"Ray records it dead, {dead.death_reason}: {dead.death_message}")


def finish_work(demo: DemoCluster, story: Story) -> None:
    """Where the sample job's tasks ended up."""
    outcomes = demo.workload.results(timeout_s=30)
    finished = [o for o in outcomes if not o.startswith("error")]
    names = {n.node_id: n.node_type for n in demo.cluster.nodes()}
    where = sorted({names.get(node_id, node_id[-5:]) for node_id in finished})
    story.figures["tasks_finished"] = len(finished)
    story.tell(
        f"sample job: {len(finished)} of {len(outcomes)} task(s) finished "
        f"(on {', '.join(where) or 'no node'})"
    )


def _alive(cluster: AutoscaledLocalCluster, node_id: str) -> bool:
    return any(n.alive for n in cluster.nodes() if n.node_id == node_id)


# ---------------------------------------------------------------- the workload


@dataclass
class DemoWorkload:
    """The sample job: a driver process of its own (its Ray messages go to its log file);
    its tasks work until the file `stop_path` exists."""

    process: subprocess.Popen[str]
    log_path: Path
    stop_path: Path

    def results(self, timeout_s: float) -> list[Any]:
        """What each task returned (its node id) or the error, once the job ended."""
        try:
            stdout, _ = self.process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            return []
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if not lines:
            return []
        outcomes: list[Any] = json.loads(lines[-1])["results"]
        return outcomes

    def stop(self) -> None:
        """Let the tasks finish."""
        self.stop_path.touch()

    def end(self) -> None:
        """End the driver (the job) if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def start_workload(
    cluster: AutoscaledLocalCluster, warned: LocalNode, busy: LocalNode
) -> DemoWorkload:
    """Run the sample job (`python -m spot_responder.cli.demo ...`); return once it runs."""
    log_path = Path(cluster.temp_dir, "sample-job.log")
    stop_path = Path(cluster.temp_dir, "sample-job.stop")
    command = [
        *(sys.executable, "-m", "spot_responder.cli.demo", cluster.address),
        *(warned.node_id, busy.node_id, str(stop_path)),
    ]
    with open(log_path, "w", encoding="utf-8") as job_log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=job_log, text=True)
    workload = DemoWorkload(process, log_path, stop_path)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("running"):
        workload.end()
        raise RuntimeError(f"the sample job did not start: {log_path.read_text()[-2000:]}")
    return workload


def sample_job(address: str, warned_node: str, busy_node: str, stop: str) -> None:
    """The sample job's driver: two tasks and one actor on the warned node (working past
    its termination; Ray's default retries), one task keeping the other spot node busy."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from spot_responder.cli.embedded import _sample_progress_actor, _wait_until_started

    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    progress = (
        _sample_progress_actor()
        .options(scheduling_strategy=NodeAffinitySchedulingStrategy(warned_node, soft=False))
        .remote()
    )
    task = ray.remote(sample_until)

    def on(node_id: str, cpus: float, name: str) -> Any:
        strategy = NodeAffinitySchedulingStrategy(node_id, soft=node_id == warned_node)
        return task.options(scheduling_strategy=strategy, num_cpus=cpus, name=name).remote(
            progress, stop
        )

    tasks = [on(warned_node, 0.5, f"sample_batch_{index}") for index in range(2)]
    busy = on(busy_node, 1, "sample_batch_busy")
    _wait_until_started(progress, 3)
    print("running", flush=True)
    results: list[str] = []
    for ref in [*tasks, busy]:
        try:
            results.append(str(ray.get(ref, timeout=120)))
        except Exception as exc:  # a task lost with its node is an outcome too
            results.append(f"error: {type(exc).__name__}")
    print(json.dumps({"results": results[:-1]}), flush=True)


def sample_until(progress: Any, stop: str) -> str:
    """A sample task: note its start, work until the file `stop` exists, return its node id.

    Run again after its node died, it finishes as soon as the demo ends the work.
    """
    import ray

    progress.record_start.remote()  # not waited for: the actor dies with the warned node
    while not os.path.exists(stop):
        time.sleep(0.2)
    return str(ray.get_runtime_context().get_node_id())


if __name__ == "__main__":
    sample_job(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])
