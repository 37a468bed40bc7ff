"""One spot interruption of a worker running long, resumable work; with or without the responder.

The bundle's checkpoint job (ray_hooks/bundle/checkpoint_job.py) runs on a real local
cluster - a head holding the progress, the worker that will be interrupted, a spare - with
the notice window scaled down. With the responder, the warning is answered by
`python -m ray_hooks respond`, which drains the node; without it ("Ray alone") nothing
happens until the node dies. Either way the worker is SIGKILLed at its termination time, as
EC2 does. What is measured is what Ray and the job itself did: whether an actor's checkpoint,
started on the notice, finished before the kill, and how many steps of the tasks ran twice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ray_hooks.bundle.checkpoint_job import Progress, resumable_task
from tests.ray_hooks_support import (
    FAST_NODE_DEATH,
    environment,
    notice,
    request,
    run_ray_hooks,
)

LABEL = "spot-responder/instance-id"
WORKER = "i-0a1b2c3d4e5f60091"


@dataclass(frozen=True)
class Interruption:
    """What one run saw."""

    responder: bool
    window_s: float
    #: Seconds between the notice and the actor's checkpoint done (None: never done).
    checkpoint_done_s: float | None
    #: Seconds between the notice and the kill.
    killed_s: float
    tasks: int
    steps: int
    #: Steps run twice, all tasks together (work lost with the node and redone).
    repeated_steps: int
    completed: int
    death_reason: str


class Saver:
    """An actor whose checkpoint takes `checkpoint_s`; it starts when the node is told to go."""

    def __init__(self, progress: Any, checkpoint_s: float) -> None:
        from ray_hooks import preemption

        self._progress = progress
        self._checkpoint_s = checkpoint_s
        self._watch = preemption.on_notice(self._checkpoint)
        self._watch.__enter__()

    def ready(self) -> bool:
        return True

    def _checkpoint(self, _deadline: Any) -> None:
        time.sleep(self._checkpoint_s)  # writing the actor's state somewhere safe
        import ray

        ray.get(self._progress.save.remote(-1, int(time.time() * 1000)))


def interrupt(responder: bool, *, window_s: float = 12.0, tasks: int = 2) -> Interruption:
    """Start a cluster, run the work, warn, kill at the termination time, and measure."""
    with environment(FAST_NODE_DEATH):
        return _interrupt(responder, window_s, tasks)


def _interrupt(responder: bool, window_s: float, tasks: int) -> Interruption:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        worker = cluster.add_node(num_cpus=tasks + 1, labels={LABEL: WORKER})
        cluster.add_node(num_cpus=tasks + 1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        step_s = window_s / 6
        steps = 18  # three windows long
        on_head = NodeAffinitySchedulingStrategy(cluster.head_node.node_id, soft=False)
        progress = ray.remote(num_cpus=0)(Progress).options(scheduling_strategy=on_head).remote()
        there = NodeAffinitySchedulingStrategy(node_id=worker.node_id, soft=True)
        saver = (
            ray.remote(num_cpus=0.5, max_restarts=0)(Saver)
            .options(scheduling_strategy=there)
            .remote(progress, 0.3 * window_s)
        )
        ray.get(saver.ready.remote(), timeout=120)
        work = ray.remote(num_cpus=1)(resumable_task).options(scheduling_strategy=there)
        refs = [work.remote(progress, n, steps, step_s) for n in range(tasks)]
        _wait_for_steps(progress, tasks * 2, timeout_s=120)

        noticed = datetime.now(UTC)
        termination = noticed + timedelta(seconds=window_s)
        if responder:
            deadline = termination - timedelta(seconds=1)
            answered = run_ray_hooks(
                "respond",
                "--address",
                cluster.address,
                stdin=json.dumps(request(notice(WORKER, deadline=deadline))),
            )
            assert answered.code == 0, answered.stderr
        while datetime.now(UTC) < termination:
            time.sleep(0.05)
        cluster.remove_node(worker, allow_graceful=False)
        killed_s = (datetime.now(UTC) - noticed).total_seconds()

        done = ray.get(refs, timeout=600)
        report = ray.get(progress.report.remote())
        checkpoint_ms = ray.get(progress.resume_point.remote(-1))
        return Interruption(
            responder=responder,
            window_s=window_s,
            checkpoint_done_s=(checkpoint_ms / 1000 - noticed.timestamp())
            if checkpoint_ms
            else None,
            killed_s=killed_s,
            tasks=tasks,
            steps=steps,
            repeated_steps=sum(ran - steps for task, (_, ran) in report.items() if task >= 0),
            completed=len(done),
            death_reason=_death_reason(worker.node_id),
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


def _wait_for_steps(progress: Any, count: int, timeout_s: float) -> None:
    import ray

    deadline = time.monotonic() + timeout_s
    while sum(ran for _, ran in ray.get(progress.report.remote()).values()) < count:
        assert time.monotonic() < deadline, "the tasks did not start"
        time.sleep(0.2)


def _death_reason(node_id: str) -> str:
    """How Ray booked the node's death (a `NodeDeathInfo.Reason` name)."""
    import ray
    from ray.core.generated import common_pb2

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for node in ray.nodes():
            if node["NodeID"] == node_id and not node["Alive"]:
                reason = node.get("DeathReason")
                if isinstance(reason, int):
                    return str(common_pb2.NodeDeathInfo.Reason.Name(reason))
                return str(reason or "")
        time.sleep(0.5)
    return "not recorded"
