"""A local Ray cluster on the real Ray autoscaler: the `fake_multinode` provider, no Docker.

The head runs `RAY_FAKE_CLUSTER=1 ray start --head --block --autoscaling-config=...` in a
session (process group) of its own, on free ports and in a fresh temp dir. The autoscaler
on that head (v2, as `ray up` starts it on Ray 2.60) launches "nodes" as local raylets in
the same process group, so tearing down is one `os.killpg` on that group. It never runs
`ray stop` (that ends every Ray process of the machine).

How a fake node is known: the provider starts worker `n` as a raylet with the node id
`fffff...f<n:05d>`, its type's labels and resources, and `RAY_CLOUD_INSTANCE_ID` set to the
same id. Labels are static per node type, so a node that plays an EC2 instance (label
`spot-responder/instance-id`) is the one node of a type with `max_workers: 1`.

Ray-internal parts relied on: the provider class
`ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider` (through the
`external` provider type: the wheel lacks the `fake_multinode` defaults file) and its
`gcs_address`, `launch_multiple`, `head_node_id` options; `RAY_FAKE_CLUSTER=1`;
`ray.autoscaler.v2.sdk.request_cluster_resources` to bring up the first workers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from spot_responder.cli.lifecycle import StartedInWith

FAKE_HEAD_NODE_ID = "f" * 51 + "00000"
FAKE_PROVIDER_CLASS = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
HEAD_NODE_TYPE = "ray.head.default"
INSTANCE_ID_LABEL = "spot-responder/instance-id"
OBJECT_STORE_BYTES = 100 * 1024 * 1024
#: Death of a killed node is recorded within ~3 s instead of ~30 s.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_timeout_ms": "500",
}


@dataclass(frozen=True)
class LocalNode:
    """A node as the GCS knows it."""

    node_id: str
    node_type: str
    alive: bool
    is_head: bool
    labels: Mapping[str, str]
    started: float  # wall clock
    death_reason: str = ""  # NodeDeathInfo.Reason name, e.g. AUTOSCALER_DRAIN_PREEMPTED
    death_message: str = ""


class AutoscaledLocalCluster(StartedInWith):
    """A head with the real autoscaler; worker types as given (a `ray up` config's shape)."""

    def __init__(
        self,
        node_types: Mapping[str, Any],
        *,
        max_workers: int,
        idle_timeout_minutes: float = 0.1,
        head_labels: Mapping[str, str] | None = None,
    ) -> None:
        self._node_types = dict(node_types)
        self._max_workers = max_workers
        self._idle_timeout_minutes = idle_timeout_minutes
        self._head_labels = dict(head_labels or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self.temp_dir = ""
        self.gcs_address = ""
        self.config_path = ""

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 120.0, attempts: int = 2) -> None:
        """Start the head; once more when `ray start` gave up (its raylet must register
        within a fixed 30 s, which a machine busy with other work sometimes misses)."""
        for attempt in range(1, attempts + 1):
            try:
                self._start(timeout_s)
                return
            except RuntimeError:  # `ray start` exited
                self.shutdown()
                if attempt == attempts:
                    raise

    def _start(self, timeout_s: float) -> None:
        # A short path: Ray's unix sockets live under it (108-byte limit).
        self.temp_dir = tempfile.mkdtemp(prefix="rsr-demo-", dir="/tmp")
        port = _free_port()
        self.gcs_address = f"{_node_ip()}:{port}"
        self.config_path = os.path.join(self.temp_dir, "ray_bootstrap_config.yaml")
        Path(self.config_path).write_text(yaml.safe_dump(self._config()))
        labels = ",".join(f"{k}={v}" for k, v in self._head_labels.items())
        command = [
            str(Path(sys.executable).with_name("ray")),
            *("start", "--head", "--block", f"--port={port}", f"--temp-dir={self.temp_dir}"),
            f"--autoscaling-config={self.config_path}",
            "--num-cpus=0",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--ray-client-server-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-port={_free_port()}",
            "--include-dashboard=true",  # the impact analysis reads Ray's state API
            "--disable-usage-stats",
            *([f"--labels={labels}"] if labels else []),
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
        env.update(FAST_HEALTH_CHECKS)
        env.update(
            {
                "RAY_FAKE_CLUSTER": "1",
                "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                "RAY_NODE_TYPE_NAME": HEAD_NODE_TYPE,
                "RAY_NODE_MARKET_TYPE": "on-demand",
                "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
                "RAY_enable_autoscaler_v2": "1",
            }
        )
        log = open(os.path.join(self.temp_dir, "ray-start.log"), "wb")  # noqa: SIM115
        with log:
            self._proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        # A GcsClient made before the GCS listens logs a warning: wait for the port first.
        self.wait_for(lambda: _listening(port), timeout_s, "the GCS")
        self.wait_for(lambda: any(n.is_head and n.alive for n in self.nodes()), timeout_s, "head")

    def shutdown(self) -> None:
        """End the process group this cluster created, then remove its temp dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _end_group(proc)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = ""

    def _config(self) -> dict[str, Any]:
        provider = {
            "type": "external",
            "module": FAKE_PROVIDER_CLASS,
            "gcs_address": self.gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "launch_multiple": True,
            "head_node_id": FAKE_HEAD_NODE_ID,
        }
        empty: list[Any] = []
        return {
            "cluster_name": "spot-responder-local",
            "max_workers": self._max_workers,
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": self._idle_timeout_minutes,
            "docker": {},
            "provider": provider,
            "auth": {"ssh_user": "ray"},
            "available_node_types": self._node_types,
            "head_node_type": HEAD_NODE_TYPE,
            "file_mounts": {},
            "file_mounts_sync_continuously": False,
            **{
                key: empty
                for key in (
                    "cluster_synced_files",
                    "rsync_exclude",
                    "rsync_filter",
                    "initialization_commands",
                    "setup_commands",
                    "head_setup_commands",
                    "worker_setup_commands",
                    "head_start_ray_commands",
                    "worker_start_ray_commands",
                )
            },
        }

    # ------------------------------------------------------------ what callers use

    @property
    def address(self) -> str:
        return self.gcs_address

    def bring_up(self, node_types: Sequence[str], timeout_s: float = 90.0) -> list[LocalNode]:
        """Ask the autoscaler for one node of each type (by its marker resource); wait for them."""
        from ray.autoscaler.v2.sdk import request_cluster_resources

        demand = [{"resources": {"CPU": 1, name: 1}, "label_selector": {}} for name in node_types]
        request_cluster_resources(self.gcs_address, demand)

        def up() -> bool:
            alive = {n.node_type for n in self.nodes() if n.alive and not n.is_head}
            return set(node_types) <= alive

        self.wait_for(up, timeout_s, f"nodes of {', '.join(node_types)}")
        return [n for n in self.nodes() if n.alive and not n.is_head]

    def clear_requests(self) -> None:
        """Drop the resource request `bring_up` made."""
        from ray.autoscaler.v2.sdk import request_cluster_resources

        request_cluster_resources(self.gcs_address, [])

    def nodes(self) -> list[LocalNode]:
        """All nodes the GCS knows about (alive and dead)."""
        from ray._raylet import GcsClient  # type: ignore[attr-defined]  # not in Ray's stub

        client: Any = GcsClient(address=self.gcs_address)
        return [
            LocalNode(
                node_id=node_id.hex(),
                node_type=str(info.node_type_name),
                alive=info.state == 0,
                is_head=bool(info.is_head_node),
                labels=dict(info.labels),
                started=int(info.start_time_ms) / 1000,
                death_reason=_enum_name(info.death_info, "reason") if info.state else "",
                death_message=str(info.death_info.reason_message),
            )
            for node_id, info in client.get_all_node_info(timeout=10).items()
        ]

    def wait_for(self, condition: Callable[[], object], timeout_s: float, what: str) -> float:
        """Poll `condition` every 0.25 s until it is true; the seconds it took."""
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
        raise TimeoutError(f"no {what} after {timeout_s:.0f} s ({last_error!r})")

    def log(self, tail: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return Path(self.temp_dir, "ray-start.log").read_text(errors="replace")[-tail:]
        return ""

    def kill_node(self, node_id: str) -> float | None:
        """End a node as EC2 ends an instance: SIGKILL its raylet and every process under it.

        Only a raylet of this cluster's process group with this `--node_id` is touched.
        Returns when the kill was sent (wall clock), or None when no such raylet runs.
        """
        if self._proc is None:
            return None
        table = _processes()
        group = self._proc.pid
        flag = f"--node_id={node_id}"
        raylets = [
            pid
            for pid, (_, pgid, args) in table.items()
            if pgid == group and args.split(" ", 1)[0].endswith("/raylet") and flag in args
        ]
        if not raylets:
            return None
        victims = set(raylets)
        grew = True
        while grew:  # every descendant of the raylet: its workers and what they started
            more = {pid for pid, (ppid, _, _) in table.items() if ppid in victims} - victims
            victims |= more
            grew = bool(more)
        killed_at = time.time()
        # The raylet first: killed after one of its agents, it would see the agent go and
        # exit by itself, booking its own death as UNEXPECTED_TERMINATION before the GCS
        # could judge it (EC2 takes the whole machine at once).
        for pid in [*raylets, *(victims - set(raylets))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return killed_at


def _enum_name(message: Any, field: str) -> str:
    descriptor = message.DESCRIPTOR.fields_by_name[field]
    return str(descriptor.enum_type.values_by_number[getattr(message, field)].name)


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, command line), from `ps` (Linux and macOS)."""
    listing = subprocess.run(
        ["ps", "-A", "-o", "pid=,ppid=,pgid=,args="],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    table = {}
    for line in listing.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4:
            table[int(parts[0])] = (int(parts[1]), int(parts[2]), parts[3])
    return table


def _end_group(proc: subprocess.Popen[bytes], grace_s: float = 3.0) -> None:
    """SIGTERM the group `proc` leads, SIGKILL what is left, wait until it is gone."""
    group = proc.pid  # start_new_session: the child leads a group with its own pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    _wait_until_gone(group, grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    _wait_until_gone(group, 15.0)


def _wait_until_gone(group: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((_node_ip(), port)) == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def _node_ip() -> str:
    """The IP the fake provider's raylets will use (Ray's own lookup)."""
    from ray._private.services import get_node_ip_address

    return str(get_node_ip_address())  # type: ignore[no-untyped-call]
