"""A real Ray autoscaler on one machine: the ``fake_multinode`` provider, no Docker.

The head node runs ``RAY_FAKE_CLUSTER=1 ray start --head --block --autoscaling-config=...``
in a process group of its own, on free ports and in a fresh temp dir. The autoscaler
(monitor) on that head launches "nodes" as local raylets in the same process group, so
tearing the cluster down is one ``os.killpg`` on the group this helper created. It never
runs ``ray stop`` and never uses ``AutoscalingCluster.start()`` (which runs
``ray stop --force`` and would end every Ray process on the machine).

Worker node types mirror production (``ray_hooks/bundle`` / the seed's ``ray up`` config):
x86 and arm, spot and on-demand. Each type carries

- a custom resource marker of its own (``x86_spot_worker`` has ``{"x86_spot_worker": 1}``,
  the seed's ``Intel``/``Graviton`` idea, one marker per type), so a bundle can name the
  type by resource;
- the labels ``ray.io/market-type`` (``spot``/``on-demand``), ``ray.io/node-group`` and
  ``spot-responder/arch``, as the cluster bundle declares them.

The head runs autoscaler v2, as ``ray up`` starts it since Ray 2.50
(``autoscaler_v2=False`` runs v1). Nodes get 100 MiB of object store each.

How a fake node is identified: the provider names worker ``n`` as
``fffff...f<n:05d>`` (56 hex digits) and starts its raylet with
``RAY_OVERRIDE_NODE_ID_FOR_TESTING`` and ``RAY_CLOUD_INSTANCE_ID`` both set to that name.
So the Ray node id IS the provider node id, and ``GcsNodeInfo.instance_id`` carries it
too. The node type reaches Ray as ``GcsNodeInfo.node_type_name`` (``RAY_NODE_TYPE_NAME``).
Labels are static per node type, so a per-node ``spot-responder/instance-id`` label is
only possible as a per-type label on a type with ``max_workers: 1``
(``WorkerType.instance_id``): that is how a test lets ``ray_hooks respond`` find a node.

Use :func:`fake_autoscaling_cluster` (a context manager) or the pytest fixture
:func:`autoscaler_cluster` (import it into a test module).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import load_event, spot_responder

# The fake provider's fixed id for the head node (and the base of every worker id).
FAKE_HEAD_NODE_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"
# The fake provider tags its head node with this type, whatever the config says.
HEAD_NODE_TYPE = "ray.head.default"
FAKE_PROVIDER_CLASS = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
MARKET_LABEL = "ray.io/market-type"
NODE_GROUP_LABEL = "ray.io/node-group"
ARCH_LABEL = "spot-responder/arch"
INSTANCE_ID_LABEL = "spot-responder/instance-id"
SPOT_NOTICE_WINDOW_S = 120  # EC2 terminates a spot instance 2 minutes after the warning
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # keep /dev/shm use small: many clusters share it
# The autoscaler v1 case of a scenario: `make test` (CI) leaves it to `make test-autoscaler-v1`
# but for the busy-cluster scenario, which runs both; `ray up` on Ray 2.50+ starts v2.
V1 = pytest.param("v1", marks=pytest.mark.autoscaler_v1)
_RAY_BIN = Path(sys.executable).with_name("ray")


@dataclass(frozen=True)
class WorkerType:
    """One worker node type of the fake cluster."""

    name: str
    market: str  # "spot" | "on-demand"
    arch: str  # "x86_64" | "arm64"
    cpus: int = 1
    max_workers: int = 1
    min_workers: int = 0
    #: An EC2-style id for the `spot-responder/instance-id` label. Labels are per type, so
    #: this names the one node of a type with max_workers 1 (what `ray_hooks` finds it by).
    instance_id: str | None = None
    #: Autoscaler v2's preference among types that fit (the bundle: spot 20, on-demand 10).
    priority: int | None = None

    def config(self) -> dict[str, Any]:
        labels = {MARKET_LABEL: self.market, NODE_GROUP_LABEL: self.name, ARCH_LABEL: self.arch}
        if self.instance_id is not None:
            labels[INSTANCE_ID_LABEL] = self.instance_id
        extra = {} if self.priority is None else {"priority": self.priority}
        return {
            **extra,
            "resources": {
                "CPU": self.cpus,
                self.name: 1,
                "object_store_memory": OBJECT_STORE_BYTES,
            },
            # ray.io/node-group is spelled out: a fake node would otherwise inherit the
            # head's RAY_NODE_TYPE_NAME from the autoscaler process that spawns it.
            "labels": labels,
            "node_config": {},
            "min_workers": self.min_workers,
            "max_workers": self.max_workers,
        }


PRODUCTION_WORKER_TYPES: tuple[WorkerType, ...] = (
    WorkerType("x86_spot_worker", "spot", "x86_64"),
    WorkerType("arm_spot_worker", "spot", "arm64"),
    WorkerType("x86_ondemand_worker", "on-demand", "x86_64"),
    WorkerType("arm_ondemand_worker", "on-demand", "arm64"),
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def node_ip_address() -> str:
    """The IP the fake provider's raylets will use (same code path as Ray's)."""
    from ray._private.services import get_node_ip_address

    return str(get_node_ip_address())


def autoscaling_config(
    gcs_address: str,
    worker_types: tuple[WorkerType, ...] = PRODUCTION_WORKER_TYPES,
    *,
    max_workers: int = 3,
    idle_timeout_minutes: float = 5.0,
    autoscaler_v2: bool = True,
    provider_class: str = FAKE_PROVIDER_CLASS,
    provider_extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete cluster config for the fake provider (all defaults spelled out)."""
    # "external" + the fake provider's class, not type "fake_multinode": Ray 2.60's
    # wheel lacks fake_multi_node/example.yaml, the defaults file that type loads, so
    # the autoscaler v2 monitor dies on start with FileNotFoundError.
    provider: dict[str, Any] = {
        "type": "external",
        "module": provider_class,
        "gcs_address": gcs_address,
        # What the provider's own example.yaml sets; without them autoscaler v1 sees
        # every fake node as "launch failed" and replaces it in a loop.
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
    }
    if autoscaler_v2:
        # v2 launches through the instance manager; the head must be found by its id.
        provider["launch_multiple"] = True
        provider["head_node_id"] = FAKE_HEAD_NODE_ID
    provider.update(provider_extra or {})
    node_types: dict[str, Any] = {w.name: w.config() for w in worker_types}
    node_types[HEAD_NODE_TYPE] = {
        "resources": {"CPU": 0},
        "labels": {MARKET_LABEL: "on-demand"},
        "node_config": {},
        "max_workers": 0,
    }
    return {
        "cluster_name": "spot-responder-fake",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        "provider": provider,
        "auth": {"ssh_user": "ray"},
        "available_node_types": node_types,
        "head_node_type": HEAD_NODE_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@dataclass(frozen=True)
class FakeNode:
    """An alive or dead node as the GCS sees it."""

    node_id: str  # hex; on fake workers this equals the provider node id
    instance_id: str
    node_type: str
    alive: bool
    is_head: bool
    labels: Mapping[str, str]
    resources: Mapping[str, float]
    start_time_ms: int


@dataclass
class FakeAutoscalingCluster:
    """A head node with the real autoscaler and the fake_multinode provider."""

    worker_types: tuple[WorkerType, ...] = PRODUCTION_WORKER_TYPES
    autoscaler_v2: bool = True
    max_workers: int = 3
    idle_timeout_minutes: float = 5.0
    include_dashboard: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: The node provider's class (importable by the head's autoscaler) and extra settings.
    provider_class: str = FAKE_PROVIDER_CLASS
    provider_extra: Mapping[str, Any] = field(default_factory=dict)

    temp_dir: str = ""
    gcs_address: str = ""
    config_path: str = ""
    #: The process group of `ray start` and everything it and the autoscaler launched.
    process_group: int = 0
    _proc: subprocess.Popen[bytes] | None = None
    _log_path: str = ""

    # -- lifecycle -----------------------------------------------------------------
    def start(self, timeout_s: float = 120.0, attempts: int = 2) -> FakeAutoscalingCluster:
        """Start the head; once more when `ray start` gave up (its raylet must register
        within a fixed 30 s, which a machine busy with other clusters sometimes misses)."""
        for attempt in range(1, attempts + 1):
            # Short path: Ray's unix sockets live under it (108-byte limit).
            self.temp_dir = tempfile.mkdtemp(prefix="rsr-as-", dir="/tmp")
            try:
                self._launch()
                self.wait_for(self._head_alive, timeout_s, "the head node to be alive")
                return self
            except RuntimeError:  # `ray start` exited
                self.shutdown()
                if attempt == attempts:
                    raise
            except BaseException:
                self.shutdown()
                raise
        return self

    def _launch(self) -> None:
        port = free_port()
        self.gcs_address = f"{node_ip_address()}:{port}"
        config = autoscaling_config(
            self.gcs_address,
            self.worker_types,
            max_workers=self.max_workers,
            idle_timeout_minutes=self.idle_timeout_minutes,
            autoscaler_v2=self.autoscaler_v2,
            provider_class=self.provider_class,
            provider_extra=self.provider_extra,
        )
        self.config_path = os.path.join(self.temp_dir, "ray_bootstrap_config.yaml")
        Path(self.config_path).write_text(yaml.safe_dump(config))
        cmd = [
            str(_RAY_BIN),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--temp-dir={self.temp_dir}",
            f"--autoscaling-config={self.config_path}",
            "--num-cpus=0",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--include-dashboard={'true' if self.include_dashboard else 'false'}",
            f"--dashboard-port={free_port()}",
            "--disable-usage-stats",
        ]
        env = dict(os.environ)
        for key in ("RAY_ADDRESS", "RAY_enable_autoscaler_v2"):
            env.pop(key, None)
        env.update(
            {
                "RAY_FAKE_CLUSTER": "1",
                "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                "RAY_NODE_TYPE_NAME": HEAD_NODE_TYPE,
                "RAY_NODE_MARKET_TYPE": "on-demand",
                "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
                "RAY_enable_autoscaler_v2": "1" if self.autoscaler_v2 else "0",
            }
        )
        env.update(self.extra_env)
        self._log_path = os.path.join(self.temp_dir, "ray-start.log")
        with open(self._log_path, "wb") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.process_group = self._proc.pid  # a new session: its leader's pid is the group id

    def shutdown(self) -> None:
        """End the process group this cluster created, then remove its temp dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _kill_group(proc)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> FakeAutoscalingCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- observation -----------------------------------------------------------------
    def nodes(self) -> list[FakeNode]:
        """All nodes the GCS knows about (alive and dead)."""
        from ray._raylet import GcsClient

        client = GcsClient(address=self.gcs_address)
        out = []
        for node_id, info in client.get_all_node_info(timeout=10).items():
            out.append(
                FakeNode(
                    node_id=node_id.hex(),
                    instance_id=info.instance_id,
                    node_type=info.node_type_name,
                    alive=info.state == 0,
                    is_head=info.is_head_node,
                    labels=dict(info.labels),
                    resources=dict(info.resources_total),
                    start_time_ms=info.start_time_ms,
                )
            )
        return out

    def alive_workers(self) -> list[FakeNode]:
        return [n for n in self.nodes() if n.alive and not n.is_head]

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Poll ``condition`` every 0.25 s; return the seconds it took."""
        start = time.monotonic()
        last_error: Exception | None = None
        while time.monotonic() - start < timeout_s:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"ray start exited ({self._proc.returncode}): {self.log()}")
            try:
                if condition():
                    return time.monotonic() - start
            except Exception as exc:  # the GCS may not be up yet
                last_error = exc
            time.sleep(0.25)
        raise TimeoutError(f"timed out after {timeout_s}s waiting for {what} ({last_error!r})")

    def log(self, tail: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return Path(self._log_path).read_text(errors="replace")[-tail:]
        return ""

    def monitor_log(self, tail: int = 6000) -> str:
        """The autoscaler's own log (for failure messages)."""
        logs = sorted(Path(self.temp_dir).glob("session_*/logs/monitor.log"))
        with contextlib.suppress(OSError, IndexError):
            lines = logs[-1].read_text(errors="replace").splitlines()
            kept = [line for line in lines if "Dropping the empty legacy field" not in line]
            return "\n".join(kept)[-tail:]
        return ""

    def kill_node(self, node_id: str) -> float | None:
        """End a node as EC2 ends an instance: SIGKILL its raylet and everything under it.

        Only a raylet of this cluster's own process group with this `--node_id` is touched
        (a worker whose raylet died keeps running for a while, and would finish its task as
        if nothing had happened, hence the processes under it). Returns when the kill was
        sent (wall clock), or None when no such raylet runs: a drained node whose work
        finished has already exited by itself.
        """
        import psutil

        flag = f"--node_id={node_id}"
        raylets = []
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or [""]
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if (
                    cmdline[0].endswith("/raylet")
                    and flag in cmdline
                    and os.getpgid(process.pid) == self.process_group
                ):
                    raylets.append(process)
        if not raylets:
            return None
        killed_at = time.time()
        for raylet in raylets:
            with contextlib.suppress(psutil.Error):
                for process in [raylet, *raylet.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        process.send_signal(signal.SIGKILL)
        return killed_at

    def _head_alive(self) -> bool:
        return any(n.is_head and n.alive for n in self.nodes())


def _kill_group(proc: subprocess.Popen[bytes], grace_s: float = 3.0) -> None:
    """SIGTERM the process group `proc` leads, SIGKILL what is left, wait until it is gone.

    The grace is short on purpose: `ray start --block` takes more than 30 s to wind down
    after a SIGTERM, and nothing of a throwaway test cluster is worth keeping. Raylets the
    autoscaler spawned are reparented to init when their parent dies and stay in the group
    as zombies until init reaps them: that wait is part of "gone".
    """
    pgid = proc.pid  # start_new_session=True: the child leads a group with its own pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    _wait_until_gone(pgid, grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    _wait_until_gone(pgid, 15.0)


def _wait_until_gone(pgid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def fake_autoscaling_cluster(**kwargs: Any) -> Iterator[FakeAutoscalingCluster]:
    cluster = FakeAutoscalingCluster(**kwargs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def autoscaler_cluster() -> Iterator[FakeAutoscalingCluster]:
    """A fake_multinode cluster (autoscaler v2, production node types) per test module."""
    with fake_autoscaling_cluster() as cluster:
        yield cluster


def describe(cluster: FakeAutoscalingCluster) -> str:
    """One line per alive node, for failure messages and printed timings."""
    return json.dumps(
        [
            {"type": n.node_type, "id": n.node_id[-5:], "labels": dict(n.labels)}
            for n in cluster.nodes()
            if n.alive
        ]
    )


def replay_warning(
    cluster: FakeAutoscalingCluster,
    workdir: Path,
    termination: float,
    *,
    event_id: str,
    safety_margin_s: float,
    ledger: Path | None = None,
) -> dict[str, Any]:
    """The sample spot warning (events/spot-interruption-terminate.json) through
    `spot-responder replay --ray-address ... --keep-time`, as a user runs it, with its time
    set so that EC2 terminates the instance at `termination` (wall clock). The head's
    cluster config is the cluster's own (`~/ray_bootstrap_config.yaml` on a real head).
    Returns the replay's JSON for the notice."""
    event = load_event("spot-interruption-terminate.json")
    sent = datetime.fromtimestamp(termination - SPOT_NOTICE_WINDOW_S, tz=UTC)
    event["id"] = event_id
    event["time"] = sent.strftime("%Y-%m-%dT%H:%M:%SZ")
    path = workdir / "warning.json"
    path.write_text(json.dumps(event))
    done = spot_responder(
        *("replay", "--ray-address", cluster.gcs_address, "--keep-time", "--json"),
        *("--ledger", str(ledger or workdir / "ledger.sqlite3"), str(path)),
        env={
            "SAFETY_MARGIN_SECONDS": str(safety_margin_s),
            "REPLACEMENT_MODE": "spot-first",
            "RAY_HOOKS_CLUSTER_CONFIG": cluster.config_path,
        },
        timeout_s=180,
    )
    if done.returncode != 0:
        raise RuntimeError(f"replay failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    (notice,) = json.loads(done.stdout)
    return dict(notice)


def send_demand(cluster: FakeAutoscalingCluster, demand: list[dict[str, Any]]) -> None:
    """Replace the cluster's resource request by `demand`, as the responder sends it."""
    from ray_hooks.capacity import autoscaler
    from ray_hooks.capacity.request import DEFAULT_TTL_S
    from ray_hooks.cluster import connect

    gcs = connect(cluster.gcs_address)
    autoscaler.send(gcs, demand, v2=cluster.autoscaler_v2, ttl_s=DEFAULT_TTL_S)


def request_of_the_cluster(cluster: FakeAutoscalingCluster) -> list[dict[str, float]]:
    """The resource request the autoscaler holds, as Ray keeps it (v2: the constraint)."""
    from ray_hooks.cluster import connect

    gcs = connect(cluster.gcs_address)
    if not cluster.autoscaler_v2:
        raw = gcs.internal_kv_get(b"autoscaler_resource_request", None)
        return list(json.loads(raw or b"[]"))
    from ray.autoscaler.v2.sdk import get_cluster_resource_state

    state = get_cluster_resource_state(gcs)
    return [
        dict(item.request.resources_bundle)
        for constraint in state.cluster_resource_constraints
        for item in constraint.resource_requests
        for _ in range(item.count)  # Ray keeps equal bundles as one item with a count
    ]


def replay_events(
    cluster: FakeAutoscalingCluster,
    workdir: Path,
    ledger: Path,
    events: list[dict[str, Any]],
    *,
    keep_time: bool,
    safety_margin_s: float = 5,
) -> list[dict[str, Any]]:
    """`spot-responder replay --json` of `events` as one SQS batch (a file each, named by
    event id); the replay's JSON, one item per notice."""
    paths = []
    for event in events:
        path = workdir / f"{event['id']}.json"
        path.write_text(json.dumps(event))
        paths.append(str(path))
    done = spot_responder(
        *("replay", "--ray-address", cluster.gcs_address, "--json", "--ledger", str(ledger)),
        *(["--keep-time"] if keep_time else []),
        *paths,
        env={
            "SAFETY_MARGIN_SECONDS": str(safety_margin_s),
            "RAY_HOOKS_CLUSTER_CONFIG": cluster.config_path,
        },
        timeout_s=180,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    notices: list[dict[str, Any]] = json.loads(done.stdout)
    return notices
