"""A Ray head node in a box: the bundle's own commands, as `ray up` runs them, on this machine.

Each box machine (the head, each worker) is a network namespace of its own (a veth pair
joins them, 10.77.x.0/24), a mount namespace with a private /tmp (so Ray's /tmp/ray, with
its address file, is the machine's own) and a PID namespace (so the bundle's `ray stop`
sees that machine's processes only, and ending the machine ends all of them). In each,
169.254.169.254 is a small IMDSv2 (tests/headbox/imds.py) that gives the machine its
instance id, AZ and life cycle.

What runs is what the rendered cluster YAML says (ray_hooks.bundle.render, the stack's
defaults from template.yaml: RayUser ec2-user, RayPython /home/ec2-user/ray-venv/...):

- `setup_commands` as the Ray user, in a login shell, with network (on the host's
  network): the package-manager step (`sudo dnf install python3.12`) is replaced by a
  `python3.12` in the user's ~/bin that is the system's Python 3.11; every other command
  runs as written;
- `file_mounts`: ray_hooks copied to ~/spot-responder/ray_hooks, as `ray up` rsyncs it;
- `head_setup_commands`, `head_start_ray_commands` on the head, `worker_start_ray_commands`
  on a worker, each wrapped exactly as Ray's cluster launcher wraps them (Ray's own
  `with_envs`, `with_head_node_ip`, `_with_environment_variables` and `_with_interactive`:
  `bash --login -c -i 'source ~/.bashrc; export ...; (command)'`), as the Ray user;
- `~/ray_bootstrap_config.yaml` is the rendered YAML (what `ray up` writes there).

Token authentication: the Ray user has a token in ~/.ray/auth_token (what `ray
get-auth-token --generate` writes); Ray 2.59+ then starts the head with token auth on.

Only root can build a box (ip netns, nsenter, useradd).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
NETWORK_PREFIX = "10.77"
IMDS_ADDRESS = "169.254.169.254"
AGENT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HEAD_TYPE = "ray.head.default"
#: Tries of a node's start commands: Ray gives a raylet 30 s (hard-coded) to register with
#: the GCS, which a two-core machine shared by several test suites does not always give.
STARTS = 3
#: The Python that stands in for Amazon Linux 2023's python3.12 package.
SYSTEM_PYTHON = "/usr/bin/python3.11"


class BoxError(RuntimeError):
    """A box step failed; the message carries the step's output."""


def stack_defaults() -> dict[str, str]:
    """RayUser and RayPython as template.yaml declares their defaults."""
    from tests.cfn import template

    parameters = template()["Parameters"]
    return {name: str(parameters[name]["Default"]) for name in ("RayUser", "RayPython")}


def rendered_config(ray_user: str, ray_python: str) -> dict[str, Any]:
    """The bundle's cluster YAML, rendered offline with the stack's defaults."""
    from ray_hooks.bundle import render

    options = render.ClusterOptions(
        region="us-west-2",
        subnet_ids=["subnet-0123456789abcdef0"],
        head_security_group_ids=["sg-0123456789abcdef0"],
        worker_security_group_ids=["sg-0fedcba9876543210"],
        cluster_name="headbox",
        ray_hooks_source=ROOT / "ray_hooks",
    )
    stack = render.StackValues(
        head_instance_profile_arn="arn:aws:iam::123456789012:instance-profile/head",
        worker_instance_profile_arn="arn:aws:iam::123456789012:instance-profile/worker",
        ray_user=ray_user,
        ray_python=ray_python,
    )
    config: dict[str, Any] = yaml.safe_load(render.render_text(options, stack))
    return config


def run(
    command: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        check=False,
    )


def checked(command: Sequence[str], *, timeout: float = 60, what: str = "") -> str:
    done = run(command, timeout=timeout)
    if done.returncode != 0:
        raise BoxError(
            f"{what or command[0]} failed ({done.returncode}): "
            f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


# ---------------------------------------------------------------- the Ray user


@dataclass(frozen=True)
class RayUser:
    name: str
    home: Path

    @classmethod
    def ensure(cls, name: str) -> RayUser:
        if run(["id", "-u", name], timeout=10).returncode != 0:
            checked(["useradd", "--create-home", "--shell", "/bin/bash", name], what="useradd")
        home = Path(checked(["getent", "passwd", name]).split(":")[5])
        return cls(name, home)

    def login_shell(self, command: str) -> list[str]:
        """`command` as the user's login shell runs it (a clean environment, HOME, PATH)."""
        return ["runuser", "-l", self.name, "-c", command]

    def write(self, relative: str, text: str, mode: int = 0o644) -> Path:
        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        self.chown(path.parent if path.parent != self.home else path)
        self.chown(path)
        return path

    def chown(self, path: Path) -> None:
        checked(["chown", "-R", f"{self.name}:{self.name}", str(path)])


def install_ray(user: RayUser, config: Mapping[str, Any]) -> float:
    """The bundle's setup: setup_commands (the dnf step replaced), file_mounts; seconds."""
    started = time.monotonic()
    user.write("bin/python3.12", f'#!/bin/sh\nexec {SYSTEM_PYTHON} "$@"\n', mode=0o755)
    setup = list(config["setup_commands"])
    if not setup[0].startswith("sudo dnf install"):
        raise BoxError(f"the bundle's first setup command is not the dnf step: {setup[0]}")
    for command in setup[1:]:
        checked(user.login_shell(command), timeout=900, what=f"setup command {command!r}")
    for remote, local in config["file_mounts"].items():
        target = user.home / remote.removeprefix("~/")
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(local, target, ignore=shutil.ignore_patterns("__pycache__"))
        user.chown(target.parent)
    return time.monotonic() - started


def generate_token(user: RayUser, ray_venv: str) -> Path:
    """The Ray user's auth token, as `ray get-auth-token --generate` writes it."""
    token = user.home / ".ray" / "auth_token"
    if not token.exists():
        checked(user.login_shell(f"{ray_venv}/bin/ray get-auth-token --generate"), what="token")
    if not token.exists():
        raise BoxError(f"`ray get-auth-token --generate` wrote no {token}")
    return token


# ---------------------------------------------------------------- machines


@dataclass
class Machine:
    """One EC2 instance of the box: its own network, /tmp, processes and IMDSv2."""

    name: str
    instance_id: str
    zone: str
    life_cycle: str
    ip: str
    netns: str
    holder: subprocess.Popen[bytes] | None = None
    imds: subprocess.Popen[bytes] | None = None
    pid1: int = 0
    imds_log: Path | None = None
    logs: list[str] = field(default_factory=list)

    def start(self) -> None:
        """The namespaces (held by a sleeping PID 1), then the metadata service."""
        self.holder = subprocess.Popen(
            [
                "ip", "netns", "exec", self.netns,
                "unshare", "--mount", "--pid", "--fork", "--mount-proc", "--propagation",
                "private", "sh", "-c",
                "mount -t tmpfs -o mode=1777 tmpfs /tmp && echo up && exec sleep infinity",
            ],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != b"up":
            raise BoxError(f"machine {self.name} did not start")
        self.pid1 = _child_of(self.holder.pid)
        self.imds_log = Path(tempfile.mkstemp(prefix=f"imds-{self.name}-", suffix=".log")[1])
        with self.imds_log.open("wb") as log:
            self.imds = subprocess.Popen(
                [
                    *self.enter(), sys.executable, str(Path(__file__).with_name("imds.py")),
                    self.instance_id, self.zone, self.life_cycle, "--local-ipv4", self.ip,
                ],
                stdout=subprocess.PIPE,
                stderr=log,
            )  # fmt: skip
        assert self.imds.stdout is not None
        if self.imds.stdout.readline().strip() != b"ready":
            raise BoxError(f"the IMDS of {self.name} did not start: {self.imds_log.read_text()}")

    def enter(self) -> list[str]:
        """The command prefix that runs a command inside this machine (as root)."""
        return ["nsenter", "-t", str(self.pid1), "--net", "--mount", "--pid", "--"]

    def run(
        self, command: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run([*self.enter(), *command], timeout=timeout, env=env)

    def stop(self) -> None:
        """End the machine: killing its PID 1 kills every process in it, as EC2 does."""
        if self.pid1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, signal.SIGKILL)
        for process in (self.imds, self.holder):
            if process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
        if self.imds_log is not None:
            self.imds_log.unlink(missing_ok=True)


def _child_of(pid: int, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise BoxError(f"process {pid} has no child")


@dataclass
class Network:
    """The box's network: one namespace per machine, a veth pair from each to the head's."""

    tag: str
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def add(self, name: str) -> str:
        netns = f"rsr{self.tag}{name}"[:15]
        checked(["ip", "netns", "add", netns])
        self.namespaces.append(netns)
        inside = ["ip", "netns", "exec", netns]
        checked([*inside, "ip", "link", "set", "lo", "up"])
        checked([*inside, "ip", "addr", "add", f"{IMDS_ADDRESS}/32", "dev", "lo"])
        return netns

    def join(self, head: tuple[str, str], other: tuple[str, str], index: int) -> None:
        """A veth pair between the head's namespace and another machine's (netns, ip)."""
        near, far = f"rh{self.tag}{index}"[:15], f"rw{self.tag}{index}"[:15]
        checked(["ip", "link", "add", near, "type", "veth", "peer", "name", far])
        checked(["ip", "link", "set", near, "netns", head[0]])
        checked(["ip", "link", "set", far, "netns", other[0]])
        for (netns, address), link, peer in ((head, near, other[1]), (other, far, head[1])):
            inside = ["ip", "netns", "exec", netns]
            first = run([*inside, "ip", "route", "show", "default"], timeout=10).stdout == ""
            if first:  # the machine's one address, on its first link
                checked([*inside, "ip", "addr", "add", f"{address}/32", "dev", link])
            checked([*inside, "ip", "link", "set", link, "up"])
            checked([*inside, "ip", "route", "add", f"{peer}/32", "dev", link])
            if first:  # Ray finds the node's IP by the route to the internet: this link
                checked([*inside, "ip", "route", "add", "default", "dev", link])

    def remove(self) -> None:
        for netns in reversed(self.namespaces):
            run(["ip", "netns", "del", netns], timeout=30)


# ---------------------------------------------------------------- the cluster launcher's wrapping


def launcher_command(command: str, exports: Mapping[str, str], env_vars: Mapping[str, Any]) -> str:
    """`command` exactly as Ray's cluster launcher sends it over SSH to a node."""
    from ray.autoscaler._private.command_runner import (
        _with_environment_variables,
        _with_interactive,
    )
    from ray.autoscaler._private.util import with_envs

    (with_exports,) = with_envs([command], dict(exports)) if exports else (command,)
    final = _with_environment_variables(with_exports, dict(env_vars)) if env_vars else with_exports
    return " ".join(_with_interactive(final))


# ---------------------------------------------------------------- the box


@dataclass
class HeadBox:
    """The head and its workers; `ssm_document` runs the SSM document's command on the head."""

    user: RayUser
    config: dict[str, Any]
    ray_python: str
    network: Network
    head: Machine
    workers: list[Machine] = field(default_factory=list)
    #: Worker machines with their network, not started yet.
    spare: list[Machine] = field(default_factory=list)
    setup_s: float = 0.0

    @property
    def ray_venv(self) -> str:
        return str(Path(self.ray_python).parent.parent)

    def start_head(self) -> None:
        self.head.start()
        for command in self.config["head_setup_commands"]:
            self._as_ray_user(self.head, command, {}, {}, "head setup")
        self.user.write("ray_bootstrap_config.yaml", yaml.safe_dump(self.config))
        head_type = self.config["available_node_types"][HEAD_TYPE]
        exports = {
            "RAY_enable_autoscaler_v2": "1",
            "RAY_CLOUD_INSTANCE_ID": self.head.instance_id,
            "RAY_NODE_TYPE_NAME": HEAD_TYPE,
        }
        env_vars = {
            "RAY_USAGE_STATS_ENABLED": 0,
            "RAY_OVERRIDE_RESOURCES": head_type["resources"],
            "RAY_OVERRIDE_LABELS": head_type["labels"],
        }
        for attempt in range(1, STARTS + 1):
            try:
                for command in self.config["head_start_ray_commands"]:
                    self._as_ray_user(self.head, command, exports, env_vars, "head start", 180)
                return
            except BoxError:
                # The commands begin with `ray stop`: running them again is what
                # `ray up` does too.
                if attempt == STARTS:
                    raise

    def start_worker(
        self,
        machine: Machine,
        node_type: str,
        commands: Sequence[str] | None = None,
        restart: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run the worker's start commands; the last one's result (it may fail). `restart`:
        run them again on the started machine (they begin with `ray stop`, as on `ray up`)."""
        if not restart:
            machine.start()
            self.workers.append(machine)
        spec = self.config["available_node_types"][node_type]
        exports = {
            "RAY_HEAD_IP": self.head.ip,
            "RAY_CLOUD_INSTANCE_ID": machine.instance_id,
            "RAY_NODE_TYPE_NAME": node_type,
            "RAY_CLOUD_INSTANCE_TYPE_NAME": spec["node_config"]["InstanceType"],
        }
        # CPU and memory come from the instance type (the AWS provider fills them in).
        env_vars = {
            "RAY_OVERRIDE_RESOURCES": {"CPU": 1, **spec["resources"]},
            "RAY_OVERRIDE_LABELS": spec["labels"],
        }
        done = None
        for command in commands or self.config["worker_start_ray_commands"]:
            head_ip = f"export RAY_HEAD_IP={self.head.ip}; "  # Ray's with_head_node_ip
            done = machine.run(
                self.user.login_shell(launcher_command(head_ip + command, exports, env_vars)),
                timeout=180,
            )
            machine.logs.append(f"$ {command}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
        assert done is not None
        return done

    def _as_ray_user(
        self,
        machine: Machine,
        command: str,
        exports: Mapping[str, str],
        env_vars: Mapping[str, Any],
        what: str,
        timeout: float = 120,
    ) -> None:
        done = machine.run(
            self.user.login_shell(launcher_command(command, exports, env_vars)), timeout=timeout
        )
        machine.logs.append(f"$ {command}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
        if done.returncode != 0:
            raise BoxError(f"{what} failed ({done.returncode}): {command}\n{done.stderr[-3000:]}")

    def ssm_document(
        self, script: str, operation: str, request_b64: str, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        """The document's command as the SSM Agent runs it: root, bash, the SSM_* variables
        and the agent's own AWS_SSM_* variables; no RAY_ADDRESS, nothing else."""
        work = Path(
            f"/var/lib/amazon/ssm/{self.head.instance_id}/document/orchestration/"
            f"box-{time.time_ns()}/awsrunShellScript/runRayHooks"
        )
        work.mkdir(parents=True)
        try:
            (work / "_script.sh").write_text(script)
            env = {
                "PATH": AGENT_PATH,
                "AWS_SSM_INSTANCE_ID": self.head.instance_id,
                "AWS_SSM_REGION_NAME": "us-west-2",
                "SSM_Operation": operation,
                "SSM_Request": request_b64,
            }
            command = ["env", "-i", *_assignments(env), "bash", str(work / "_script.sh")]
            return self.head.run(
                ["sh", "-c", f"cd {work} && exec {shlex.join(command)}"], timeout=timeout
            )
        finally:
            shutil.rmtree(work.parents[2], ignore_errors=True)

    def ray_state(self, expression: str) -> Any:
        """Evaluate `expression` (with `gcs`, a GcsClient) in the head, as the Ray user."""
        code = (
            "import json, sys\n"
            "from ray._raylet import GcsClient\n"
            "from ray._private.authentication.authentication_token_setup import "
            "maybe_enable_token_auth_if_token_available\n"
            "maybe_enable_token_auth_if_token_available(warn_if_disabled=False)\n"
            f"gcs = GcsClient(address='{self.head.ip}:6379')\n"
            f"print(json.dumps({expression}))\n"
        )
        done = self.head.run(
            self.user.login_shell(f"{self.ray_python} -c {shlex.quote(code)}"), timeout=60
        )
        if done.returncode != 0:
            raise BoxError(f"reading Ray's state failed: {done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        for machine in [*self.workers, self.head]:
            machine.stop()
        self.network.remove()


def _assignments(env: Mapping[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in env.items()]


def machine(tag: str, name: str, index: int, netns: str, life_cycle: str) -> Machine:
    return Machine(
        name=name,
        instance_id=f"i-0{tag:0>4}{index:0>12x}"[:19],
        zone="us-west-2a",
        life_cycle=life_cycle,
        ip=f"{NETWORK_PREFIX}.0.{10 + index}",
        netns=netns,
    )


@contextlib.contextmanager
def head_box(workers: int = 2) -> Iterator[HeadBox]:
    """A started head (token auth on) with the bundle's Ray, and `workers` machines not yet
    started (box.spare); everything is stopped and removed after."""
    defaults = stack_defaults()
    user = RayUser.ensure(defaults["RayUser"])
    config = rendered_config(defaults["RayUser"], defaults["RayPython"])
    tag = f"{os.getpid() % 10000:04d}"
    network = Network(tag)
    head = machine(tag, "head", 0, network.add("h"), "on-demand")
    box = HeadBox(user, config, defaults["RayPython"], network, head)
    for index in range(1, workers + 1):
        worker = machine(tag, f"w{index}", index, network.add(f"w{index}"), "spot")
        network.join((head.netns, head.ip), (worker.netns, worker.ip), index)
        box.spare.append(worker)
    try:
        box.setup_s = install_ray(user, config)
        generate_token(user, box.ray_venv)
        box.start_head()
        yield box
    finally:
        box.stop()
