"""Running `python -m ray_hooks` as the SSM document and the local channel do, and reading it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

CONTRACT = Path(__file__).resolve().parent / "contract"
#: What makes the GCS book a SIGKILLed raylet dead within seconds (set before Ray starts).
FAST_NODE_DEATH = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_timeout_ms": "500",
}


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`os.environ` with `values` for the block (the Ray processes started in it inherit them)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class Run:
    """One run of `python -m ray_hooks`: exit code, the one JSON document, stderr, seconds."""

    code: int
    document: dict[str, Any]
    stdout: str
    stderr: str
    seconds: float


def run_ray_hooks(
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 60,
) -> Run:
    """Run the real CLI in a subprocess; stdout must hold exactly one JSON document."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ray_hooks", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout_s,
        check=False,
    )
    return Run(
        code=done.returncode,
        document=one_json_document(done.stdout, done.stderr),
        stdout=done.stdout,
        stderr=done.stderr,
        seconds=time.perf_counter() - started,
    )


def one_json_document(stdout: str, stderr: str = "") -> dict[str, Any]:
    lines = stdout.splitlines()
    assert len(lines) == 1, f"stdout must be one JSON line, got {stdout!r}; stderr: {stderr}"
    document: dict[str, Any] = json.loads(lines[0])
    return document


def notice(
    instance_id: str,
    *,
    action: str = "drain",
    private_ip: str | None = None,
    deadline: datetime | None = None,
    kind: str = "spot-interruption",
    no_deadline: bool = False,
) -> dict[str, Any]:
    """One request notice, with a deadline 100 s from now unless told otherwise (whole
    seconds; `no_deadline`: none at all, as for a rebalance recommendation)."""
    deadline = deadline or datetime.now(UTC) + timedelta(seconds=100)
    return {
        "notice_id": f"{instance_id}#{kind}",
        "instance_id": instance_id,
        "private_ip": private_ip,
        "kind": kind,
        "action": action,
        "drain_deadline": None if no_deadline else deadline.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def request(*notices: dict[str, Any], request_id: str = "req-test") -> dict[str, Any]:
    return {
        "version": 1,
        "operation": "respond",
        "cluster": "ray-on-laptop",
        "request_id": request_id,
        "notices": list(notices),
    }


def drained_by_ray(gcs: Any) -> set[str]:
    """Node ids that Ray's GCS reports draining, or dead from a preemption drain."""
    from ray.core.generated import common_pb2

    preempted = common_pb2.NodeDeathInfo.Reason.Value("AUTOSCALER_DRAIN_PREEMPTED")
    dead = {
        bytes(info.node_id).hex()
        for info in gcs.get_all_node_info().values()
        if info.death_info.reason == preempted
    }
    return _draining(gcs) | dead


def _draining(gcs: Any) -> set[str]:
    """The GCS's draining nodes: GcsClient's listing (Ray 2.60), else Ray's own
    GlobalStateAccessor, what ray._private.state reads them with (Ray 2.50 to 2.59)."""
    if hasattr(gcs, "get_draining_nodes"):
        return set(gcs.get_draining_nodes())
    from ray._raylet import GcsClientOptions, GlobalStateAccessor

    options = GcsClientOptions.create(gcs.address, gcs.cluster_id.hex(), False, False)
    accessor = GlobalStateAccessor(options)
    accessor.connect()
    try:
        return {str(node) for node in accessor.get_draining_nodes()}
    finally:
        accessor.disconnect()


def json_shape(value: Any) -> Any:
    """Keys and JSON types, recursively (lists by their first item); null matches anything."""
    if isinstance(value, dict):
        return {key: json_shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_shape(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return None if value is None else type(value).__name__


def same_shape(actual: Any, expected: Any) -> bool:
    """True when both have the same keys everywhere and the same types where both are set."""
    if actual is None or expected is None:
        return True
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and actual.keys() == expected.keys()
            and all(same_shape(actual[key], expected[key]) for key in expected)
        )
    if isinstance(expected, list):
        return isinstance(actual, list) and (
            not actual or not expected or same_shape(actual[0], expected[0])
        )
    return bool(actual == expected)


def example_response_shape(name: str) -> Any:
    return json_shape(json.loads((CONTRACT / name).read_text()))
