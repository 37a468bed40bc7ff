"""A real local Ray cluster whose workers are killed the way EC2 takes a spot instance.

`PreemptibleCluster` is Ray's own `ray.cluster_utils.Cluster`: a head with no CPUs (so no
work lands there) and up to five workers, each labelled with the EC2 instance id it plays
(`spot-responder/instance-id`, as `ray up` nodes are) and carrying a `spot` resource that the
scenarios' work asks for, so retried tasks and restarted actors go to another worker and
never to the head. Every process of the cluster runs with the health checks shortened
(`HEALTH_CHECK_ENV`): when a worker's raylet and workers are SIGKILLed
(`Cluster.remove_node(node, allow_graceful=False)`, what EC2 does at the termination time),
the GCS records the death within seconds instead of half a minute.

What the scenarios judge by is read from Ray itself: the death reason of a node from
`ray.nodes()` (`DeathReason`, an enum of `common_pb2.NodeDeathInfo`, and `DeathReasonMessage`),
the drain Ray holds from `GcsClient.get_draining_nodes()`, the actors from the GCS actor
table and the task attempts from `ray.util.state.list_tasks`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spot_responder.cli.embedded import _free_port, _ray_address_file_kept
from spot_responder.cli.lifecycle import StartedInWith

INSTANCE_ID_LABEL = "spot-responder/instance-id"
#: The resource every worker has and the scenarios' work asks for (never the head).
SPOT = "spot"
#: How many raylets a cluster may have on this shared machine, head included.
MAX_RAYLETS = 6
#: GCS health checks every second, three misses of 0.5 s: a killed node is DEAD in ~4 s.
HEALTH_CHECK_ENV = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_initial_delay_ms": "1000",
}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Worker:
    """One worker raylet and the EC2 instance it plays."""

    instance_id: str
    node_id: str
    node: Any  # ray._private.node.Node, what Cluster.remove_node takes
    temp_dir: str


@dataclass(frozen=True)
class Death:
    """How Ray recorded a node's death."""

    reason: str  # a NodeDeathInfo.Reason name, e.g. AUTOSCALER_DRAIN_PREEMPTED
    message: str


@contextmanager
def health_checks_shortened() -> Iterator[None]:
    """The shortened health-check settings in this process's environment, for the while."""
    before = {key: os.environ.get(key) for key in HEALTH_CHECK_ENV}
    os.environ.update(HEALTH_CHECK_ENV)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class PreemptibleCluster(StartedInWith):
    """Head (0 CPUs) + workers that can be preempted; use it with `with`."""

    def __init__(self, worker_cpus: int = 2) -> None:
        self._worker_cpus = worker_cpus
        self._cluster: Any = None
        self._temp_dir: str | None = None
        self.workers: dict[str, Worker] = {}
        self._serial = 0

    def start(self) -> None:
        self._temp_dir = tempfile.mkdtemp(prefix="rs-")
        self._cluster = _retried(self._start_head)

    def _start_head(self) -> Any:
        from ray.cluster_utils import Cluster

        with health_checks_shortened(), _ray_address_file_kept():
            return Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": 0,
                    "labels": {INSTANCE_ID_LABEL: "i-0d0d0d0d0d0d0d0d0"},
                    "temp_dir": self._temp_dir,
                    "gcs_server_port": _free_port(),
                    "include_dashboard": True,  # the state API (list_tasks) needs it
                    "dashboard_port": _free_port(),
                    "dashboard_agent_listen_port": _free_port(),
                },
            )

    @property
    def address(self) -> str:
        return str(self._cluster.gcs_address)

    @property
    def head_node_id(self) -> str:
        return str(self._cluster.head_node.node_id)

    def add_worker(
        self, instance_id: str | None = None, resources: dict[str, float] | None = None
    ) -> Worker:
        """Start one more worker raylet playing `instance_id` (a fresh one when None)."""
        alive = 1 + len(self.workers)
        if alive + 1 > MAX_RAYLETS:
            raise ValueError(f"at most {MAX_RAYLETS} raylets per cluster on this machine")
        if instance_id is None:
            self._serial += 1
            instance_id = f"i-0c0ffee{self._serial:010x}"
        # A temp dir of its own: a driver can then connect to this very raylet (`ray.init(
        # _temp_dir=...)`), which is how a job's driver is put on a doomed node.
        temp_dir = tempfile.mkdtemp(prefix="w", dir=self._temp_dir)  # short: socket paths

        def start() -> Any:
            with health_checks_shortened():
                return self._cluster.add_node(
                    num_cpus=self._worker_cpus,
                    resources={SPOT: 100, **(resources or {})},
                    labels={INSTANCE_ID_LABEL: instance_id, "ray.io/market-type": "spot"},
                    temp_dir=temp_dir,
                )

        node = _retried(start)
        worker = Worker(instance_id, str(node.node_id), node, temp_dir)
        self.workers[instance_id] = worker
        return worker

    def wait_for_workers(self, timeout_s: float = 60) -> None:
        """Until every worker raylet is alive in the GCS."""
        import ray

        wanted = {worker.node_id for worker in self.workers.values()}
        deadline = time.monotonic() + timeout_s
        while True:
            alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
            if wanted <= alive:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers {wanted - alive} never joined")
            time.sleep(0.2)

    def kill(self, worker: Worker) -> None:
        """What EC2 does at the termination time: SIGKILL the raylet and its workers."""
        self._cluster.remove_node(worker.node, allow_graceful=False)
        self.workers.pop(worker.instance_id, None)

    def shutdown(self) -> None:
        import ray

        if self._cluster is not None:
            if ray.is_initialized():
                ray.shutdown()
            with _ray_address_file_kept():
                self._cluster.shutdown()
            self._cluster = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


def _retried(start: Any, attempts: int = 3) -> Any:
    """Start a raylet (or the head), again when it does not come up in Ray's 30 s (a machine
    shared with other people's clusters can be that busy); what a failed start left running
    is ended, by PID: only this process's own new children."""
    for attempt in range(1, attempts + 1):
        before = _descendants()
        try:
            return start()
        except Exception:
            if attempt == attempts:
                raise
            log.warning("a raylet did not start in time (attempt %d); trying again", attempt)
            for pid in _descendants() - before:
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(5)
    raise AssertionError("unreachable")


def _descendants() -> set[int]:
    """The PIDs of this process's children, grandchildren... (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def death_of(node_id: str, timeout_s: float = 60) -> Death:
    """Wait until Ray records the node DEAD; return the death reason it recorded."""
    import ray
    from ray.core.generated import common_pb2

    deadline = time.monotonic() + timeout_s
    while True:
        for node in ray.nodes():
            if node["NodeID"] == node_id and not node["Alive"]:
                reason = node.get("DeathReason", 0)
                name = common_pb2.NodeDeathInfo.Reason.Name(int(reason))
                return Death(name, str(node.get("DeathReasonMessage", "")))
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray never recorded node {node_id} dead")
        time.sleep(0.25)


def draining_deadline_ms(gcs: Any, node_id: str) -> int | None:
    """The deadline (ms since the epoch, 0 = none) of the drain Ray holds; None: not draining."""
    draining = dict(gcs.get_draining_nodes())
    return None if node_id not in draining else int(draining[node_id])
