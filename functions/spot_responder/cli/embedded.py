"""A real Ray cluster on this machine, whose nodes play the EC2 instances of `events/`.

`EmbeddedRayCluster` starts a head and spot workers as separate raylets (Ray's own
`ray.cluster_utils.Cluster`), each labelled with the instance id it stands for, the node
group and the market type, exactly as nodes of a `ray up` cluster are. It uses a fresh
temporary directory and free ports, so it never meets another Ray cluster on the machine,
and it always tears down what it started. Ray is imported only when a cluster starts.

`start_sample_workload` gives the cluster something to lose: a few tasks sleeping on the
spot workers and one actor living on the first of them.
"""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spot_responder.cli.lifecycle import StartedInWith

log = logging.getLogger(__name__)

INSTANCE_ID_LABEL = "spot-responder/instance-id"
NODE_GROUP_LABEL = "ray.io/node-group"
MARKET_TYPE_LABEL = "ray.io/market-type"
#: Raylets per embedded cluster, head included: enough to drain one and keep going.
MAX_RAYLETS = 4


@dataclass(frozen=True)
class EmbeddedNode:
    """One raylet of the embedded cluster and the EC2 instance it plays."""

    instance_id: str
    node_group: str
    market_type: str
    num_cpus: int = 1

    def labels(self) -> dict[str, str]:
        return {
            INSTANCE_ID_LABEL: self.instance_id,
            NODE_GROUP_LABEL: self.node_group,
            MARKET_TYPE_LABEL: self.market_type,
        }


HEAD_NODE = EmbeddedNode("i-0d0d0d0d0d0d0d0d0", "head_node", "on-demand", num_cpus=0)
X86_SPOT_WORKER = EmbeddedNode("i-0a1b2c3d4e5f60001", "x86_spot_worker", "spot")
ARM_SPOT_WORKER = EmbeddedNode("i-0a1b2c3d4e5f60002", "arm_spot_worker", "spot")
SPOT_WORKERS = (X86_SPOT_WORKER, ARM_SPOT_WORKER)


class EmbeddedRayCluster(StartedInWith):
    """A local Ray cluster (head + spot workers) for replay and tests; use it with `with`."""

    def __init__(
        self, workers: Sequence[EmbeddedNode] = SPOT_WORKERS, head: EmbeddedNode = HEAD_NODE
    ) -> None:
        if len(workers) + 1 > MAX_RAYLETS:
            raise ValueError(f"at most {MAX_RAYLETS} raylets per embedded cluster")
        self._head_spec = head
        self._worker_specs = tuple(workers)
        self._cluster: Any = None
        self._node_ids: dict[str, str] = {}
        self._temp_dir: str | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the head, then each worker; return when all of them are alive."""
        from ray.cluster_utils import Cluster

        started = time.monotonic()
        self._temp_dir = tempfile.mkdtemp(prefix="ray-embedded-")
        with _ray_address_file_kept():
            self._cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": self._head_spec.num_cpus,
                    "labels": self._head_spec.labels(),
                    "temp_dir": self._temp_dir,
                    "gcs_server_port": _free_port(),
                    "include_dashboard": True,  # the state API needs it
                    "dashboard_port": _free_port(),
                    "dashboard_agent_listen_port": _free_port(),
                },
            )
        self._node_ids[self._head_spec.instance_id] = self._cluster.head_node.node_id
        for worker in self._worker_specs:
            self.add_worker(worker)
        log.info(
            "embedded Ray cluster at %s: %d raylets up in %.1f s",
            self.address,
            len(self._node_ids),
            time.monotonic() - started,
        )

    def add_worker(self, worker: EmbeddedNode) -> str:
        """Start one more worker raylet; return its Ray node id."""
        if self._cluster is None:
            raise RuntimeError("the embedded cluster is not started")
        if len(self._node_ids) + 1 > MAX_RAYLETS:
            raise ValueError(f"at most {MAX_RAYLETS} raylets per embedded cluster")
        node = self._cluster.add_node(num_cpus=worker.num_cpus, labels=worker.labels())
        self._node_ids[worker.instance_id] = str(node.node_id)
        return str(node.node_id)

    def shutdown(self) -> None:
        """Disconnect this process's driver from the cluster, end every raylet, clean up."""
        if self._cluster is not None:
            disconnect_driver(self.gcs_address)
            with _ray_address_file_kept():
                self._cluster.shutdown()
            self._cluster = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    # ------------------------------------------------------------ what callers use

    @property
    def address(self) -> str:
        """The address to give Ray (`ray.init`, `--address`, RAY_ADDRESS): the GCS host:port."""
        return self.gcs_address

    @property
    def gcs_address(self) -> str:
        if self._cluster is None:
            raise RuntimeError("the embedded cluster is not started")
        return str(self._cluster.gcs_address)

    @property
    def dashboard_url(self) -> str:
        if self._cluster is None:
            raise RuntimeError("the embedded cluster is not started")
        return str(self._cluster.webui_url)

    @property
    def temp_dir(self) -> str:
        """Ray's temporary directory for this cluster (sessions, logs, sockets)."""
        if self._temp_dir is None:
            raise RuntimeError("the embedded cluster is not started")
        return self._temp_dir

    @property
    def instance_ids(self) -> tuple[str, ...]:
        """The instance ids the nodes play, head first."""
        return tuple(self._node_ids)

    def node_id_for(self, instance_id: str) -> str:
        """The Ray node id (hex) of the raylet that plays `instance_id`."""
        try:
            return self._node_ids[instance_id]
        except KeyError:
            raise KeyError(f"no node of the embedded cluster plays {instance_id}") from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _ray_address_file_kept() -> Iterator[None]:
    """Leave /tmp/ray/ray_current_cluster as it was: Ray's Cluster writes and deletes it, and
    other Ray users of this machine rely on it for `address="auto"`.

    On a machine where Ray never ran, its directory does not exist and Ray's Cluster fails
    to write the file: the directory is made for the while and removed again.
    """
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    before = path.read_text() if path.exists() else None
    made = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    finally:
        with suppress(OSError):
            if before is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(before)
        if made:
            with suppress(OSError):
                path.parent.rmdir()  # only if nothing else has put files there meanwhile


def disconnect_driver(gcs_address: str) -> None:
    """End this process's driver connection to the cluster at `gcs_address`, if any."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().gcs_address == gcs_address:
        ray.shutdown()


# ---------------------------------------------------------------- sample workload


@dataclass
class SampleWorkload:
    """Handles of the sample workload; keep them, or Ray may cancel the work."""

    tasks: list[Any] = field(default_factory=list)
    progress: Any = None

    def results(self, timeout_s: float = 60.0) -> list[Any]:
        """Wait for the tasks; return what each returned (the node it ran on), or the error."""
        import ray

        outcomes: list[Any] = []
        for ref in self.tasks:
            try:
                outcomes.append(ray.get(ref, timeout=timeout_s))
            except Exception as exc:  # a task lost with its node is an outcome too
                outcomes.append(exc)
        return outcomes


def start_sample_workload(
    address: str, *, task_seconds: float = 25.0, tasks_per_worker: int = 2
) -> SampleWorkload:
    """Submit a few sleeping tasks to each spot worker and one actor on the first of them,
    from this process (connecting it as a driver), and return once all of them run."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    workers = sorted(
        node["Labels"][INSTANCE_ID_LABEL]
        for node in ray.nodes()  # type: ignore[no-untyped-call]
        if node["Alive"] and node["Labels"].get(MARKET_TYPE_LABEL) == "spot"
    )
    if not workers:
        raise RuntimeError("the cluster has no alive spot worker for the sample workload")
    progress = (
        _sample_progress_actor()
        .options(label_selector={INSTANCE_ID_LABEL: workers[0]}, name="sample-progress")
        .remote()
    )
    task = _sample_task()
    refs = [
        task.options(
            label_selector={INSTANCE_ID_LABEL: instance_id},
            num_cpus=1 / tasks_per_worker,
            name=f"sample_batch_{instance_id[-4:]}_{index}",
        ).remote(progress, task_seconds)
        for instance_id in workers
        for index in range(tasks_per_worker)
    ]
    _wait_until_started(progress, len(refs))
    return SampleWorkload(tasks=refs, progress=progress)


def _wait_until_started(progress: Any, expected: int, timeout_s: float = 60.0) -> None:
    """Until every sample task runs, and Ray's state API (which the impact reads) says so."""
    import ray
    from ray.util.state import list_tasks

    job_id = ray.get_runtime_context().get_job_id()
    address = ray.get_runtime_context().gcs_address
    deadline = time.monotonic() + timeout_s
    while ray.get(progress.started.remote()) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {expected} sample tasks did not all start in {timeout_s} s")
        time.sleep(0.2)
    # Task events reach the GCS about once a second; best effort, the tasks run anyway.
    while time.monotonic() < deadline:
        running = list_tasks(
            address=address,
            filters=[("job_id", "=", job_id), ("state", "=", "RUNNING")],
            raise_on_missing_output=False,
        )
        if sum(task.name.startswith("sample_batch_") for task in running) >= expected:
            return
        time.sleep(0.2)


class SampleProgress:
    """Counts the sample tasks that started; the sample actor, living on a spot worker."""

    def __init__(self) -> None:
        self._started = 0

    def record_start(self) -> None:
        self._started += 1

    def started(self) -> int:
        return self._started


def sample_batch(progress: Any, seconds: float) -> str:
    """One sample task: tell the progress actor it started, sleep, return its node id."""
    import ray

    ray.get(progress.record_start.remote())
    time.sleep(seconds)
    return str(ray.get_runtime_context().get_node_id())


def _sample_task() -> Any:
    import ray

    # Ray's default retries: a task lost with its node runs again elsewhere.
    return ray.remote(sample_batch)


def _sample_progress_actor() -> Any:
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(SampleProgress)
