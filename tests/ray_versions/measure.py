"""Which parts of `ray_hooks respond` work on the Ray this interpreter has: drain, impact,
capacity. Prints one JSON line (and a table row on stderr).

    VENV/bin/python -m tests.ray_versions.measure      # from the repository root

Run with the interpreter of a virtualenv that has `ray[default]==X` (and PyYAML); ray_hooks
and the embedded cluster come from this checkout (PYTHONPATH is set for the child). It
starts a real local cluster (head + two spot workers, ray.cluster_utils), a sample workload
of sleeping tasks and an actor on the workers, marks autoscaler v2 as on (what `ray up`
starts since Ray 2.50), and runs `python -m ray_hooks respond` as a subprocess with one
spot warning for the x86 worker that asks for a replacement. Each part is judged by Ray's
own state, never by ray_hooks' answer alone:

- drain: the node is in Ray's draining nodes (GlobalStateAccessor, what ray.nodes()'s
  state uses) with the deadline given, and the response says `drained`;
- impact: the response names the sample job with its running tasks on the node
  ("degraded" when it says the impact or the objects are unknown, with the reason);
- capacity: the autoscaler's cluster constraint in the GCS (`get_cluster_resource_state`)
  holds the replacement's bundle ("degraded" when the request went without its label
  selector).

The outcome `unsupported-ray` (exit 4) is reported as "refused" for every part.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "functions"), str(ROOT)]

try:
    from spot_responder.cli.embedded import (
        X86_SPOT_WORKER,
        EmbeddedRayCluster,
        start_sample_workload,
    )
except ImportError as exc:  # the embedded cluster uses Ray internals of 2.50+
    EMBEDDED_MISSING: str | None = str(exc)
else:
    EMBEDDED_MISSING = None

#: Tries to start the cluster (Ray's dashboard must come up within 20 s, which a busy
#: two-core machine does not always give it).
STARTS = 3
CLUSTER_CONFIG = {
    "cluster_name": "versions",
    "provider": {"type": "aws", "region": "us-west-2", "availability_zone": "us-west-2a"},
    "head_node_type": "head_node",
    "available_node_types": {
        "head_node": {"resources": {"CPU": 0}, "min_workers": 0, "max_workers": 0},
        "x86_spot_worker": {
            "resources": {"CPU": 1, "Intel": 1, "x86_spot_worker": 1},
            "labels": {"ray.io/market-type": "spot", "ray.io/node-group": "x86_spot_worker"},
            "min_workers": 0,
            "max_workers": 2,
            "node_config": {"InstanceType": "m5.large"},
        },
        "x86_ondemand_worker": {
            "resources": {"CPU": 1, "Intel": 1, "x86_ondemand_worker": 1},
            "labels": {
                "ray.io/market-type": "on-demand",
                "ray.io/node-group": "x86_ondemand_worker",
            },
            "min_workers": 0,
            "max_workers": 2,
            "node_config": {"InstanceType": "m5.large"},
        },
    },
}


class _PatientPolls:
    """`time` for ray._private.services: its waits poll 5x slower, so that the dashboard gets
    100 s instead of 20 s to start on a busy machine (Ray hard-codes 200 polls of 0.1 s)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(seconds * 5)


def main() -> None:
    import ray
    import ray._private.services as services

    services.time = _PatientPolls()  # type: ignore[assignment]

    row: dict[str, Any] = {"ray": ray.__version__}
    started = time.monotonic()
    if EMBEDDED_MISSING is not None or os.environ.get("MEASURE_PLAIN"):
        row.update(_plain_cluster_row(EMBEDDED_MISSING or "MEASURE_PLAIN is set"))
        row["seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(row), flush=True)
        print(_table_row(row), file=sys.stderr)
        return
    with tempfile.TemporaryDirectory(prefix="ray-versions-") as scratch:
        config = Path(scratch) / "cluster.yaml"
        config.write_text(json.dumps(CLUSTER_CONFIG))
        for attempt in range(1, STARTS + 1):
            try:
                cluster = EmbeddedRayCluster().__enter__()
            except ImportError as exc:  # the embedded cluster uses Ray 2.50+ internals
                row.update(_plain_cluster_row(str(exc)))
                break
            except Exception as exc:  # a busy machine: Ray's dashboard has 20 s to start
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                print(f"cluster start {attempt} failed: {exc!r}"[:300], file=sys.stderr)
                continue
            row.pop("error", None)
            try:
                row.update(_measure(cluster, config))
            except Exception as exc:  # the workload or a check broke: a finding too
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                cluster.shutdown()
            break
    row["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(row), flush=True)
    print(_table_row(row), file=sys.stderr)


def _measure(cluster: EmbeddedRayCluster, config: Path) -> dict[str, Any]:
    import ray
    from ray._raylet import GcsClient

    gcs = GcsClient(address=cluster.gcs_address)
    gcs.internal_kv_put(b"__autoscaler_v2_enabled", b"1", True, b"__autoscaler", 10)
    workload = start_sample_workload(cluster.address, task_seconds=40)
    node_id = cluster.node_id_for(X86_SPOT_WORKER.instance_id)
    deadline = datetime.now(UTC) + timedelta(seconds=100)
    request = {
        "version": 1,
        "operation": "respond",
        "cluster": "versions",
        "request_id": "req-versions",
        "notices": [
            {
                "notice_id": f"{X86_SPOT_WORKER.instance_id}#spot-interruption",
                "instance_id": X86_SPOT_WORKER.instance_id,
                "private_ip": None,
                "kind": "spot-interruption",
                "action": "drain",
                "drain_deadline": deadline.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "replacement": {"mode": "spot-first", "unavailable_pools": []},
            }
        ],
    }
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_ADDRESS": cluster.address,
        "RAY_HOOKS_CLUSTER_CONFIG": str(config),
    }
    done = subprocess.run(
        [sys.executable, "-m", "ray_hooks", "respond"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    found: dict[str, Any] = {"exit": done.returncode}
    if done.returncode != 0:
        reason = str(answer.get("error") or done.stderr.strip().splitlines()[-1:])[:300]
        verdict = "refused" if answer.get("outcome") == "unsupported-ray" else "fails"
        found.update(drain=verdict, impact=verdict, capacity=verdict, reason=reason)
        return found
    (result,) = answer["results"]
    found["drain"] = _drain_verdict(result, node_id, deadline)
    found["impact"], found["impact_reason"] = _impact_verdict(result, ray)
    found["capacity"], found["capacity_reason"] = _capacity_verdict(gcs, answer)
    found["support"] = _support(env)
    del workload
    return found


def _plain_cluster_row(why: str) -> dict[str, Any]:
    """On a Ray the embedded cluster cannot run on: a head and one labelled worker
    (ray.cluster_utils), one warning for the worker, and what ray_hooks answers."""
    import socket

    from ray.cluster_utils import Cluster

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    instance_id = "i-0a1b2c3d4e5f60001"
    with tempfile.TemporaryDirectory(prefix="ray-versions-") as temp_dir:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "temp_dir": temp_dir,
                "gcs_server_port": free_port(),
                "include_dashboard": False,
            },
        )
        try:
            worker = cluster.add_node(
                num_cpus=1,
                labels={
                    "spot-responder/instance-id": instance_id,
                    "ray.io/node-group": "x86_spot_worker",
                    "ray.io/market-type": "spot",
                },
            )
            cluster.wait_for_nodes()
            from ray._raylet import GcsClient

            gcs = GcsClient(address=cluster.address)
            gcs.internal_kv_put(b"__autoscaler_v2_enabled", b"1", True, b"__autoscaler", 10)
            config = Path(temp_dir) / "cluster.yaml"
            config.write_text(json.dumps(CLUSTER_CONFIG))
            deadline = datetime.now(UTC) + timedelta(seconds=100)
            request = {
                "version": 1,
                "operation": "respond",
                "cluster": "versions",
                "request_id": "req-versions",
                "notices": [
                    {
                        "notice_id": f"{instance_id}#spot-interruption",
                        "instance_id": instance_id,
                        "private_ip": None,
                        "kind": "spot-interruption",
                        "action": "drain",
                        "drain_deadline": deadline.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "replacement": {"mode": "spot-first", "unavailable_pools": []},
                    }
                ],
            }
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "RAY_ADDRESS": cluster.address,
                "RAY_HOOKS_CLUSTER_CONFIG": str(config),
            }
            done = subprocess.run(
                [sys.executable, "-m", "ray_hooks", "respond"],
                input=json.dumps(request),
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
                check=False,
            )
            support = _support(env)
            answer = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout else {}
            found: dict[str, Any] = {
                "exit": done.returncode,
                "support": support,
                "note": f"plain cluster, no dashboard: {why[:120]}",
            }
            if done.returncode != 0:
                verdict = "refused" if answer.get("outcome") == "unsupported-ray" else "fails"
                reason = str(answer.get("error") or done.stderr[-300:])[:300]
                return {
                    **found,
                    "drain": verdict,
                    "impact": verdict,
                    "capacity": verdict,
                    "reason": reason,
                }
            (result,) = answer["results"]
            found["drain"] = _drain_verdict_plain(gcs, result, worker.node_id, deadline)
            found["impact"] = "not measured (no dashboard)"
            found["impact_reason"] = result["message"][-200:]
            found["capacity"], found["capacity_reason"] = _capacity_verdict(gcs, answer)
            return found
        finally:
            cluster.shutdown()


def _drain_verdict_plain(gcs: Any, result: dict[str, Any], node_id: str, deadline: datetime) -> str:
    from ray_hooks import compat

    deadline_ms = compat.draining_nodes(gcs, 10).get(node_id)
    if result["outcome"] != "drained" or deadline_ms is None:
        return f"fails ({result['outcome']}: {result['message'][:120]})"
    if abs(int(deadline_ms) - int(deadline.timestamp() * 1000)) > 1000:
        return f"degraded (deadline {deadline_ms} not the one given)"
    return "works"


def _drain_verdict(result: dict[str, Any], node_id: str, deadline: datetime) -> str:
    from ray._private import state

    draining = state.state.get_draining_nodes()  # the driver of start_sample_workload
    if isinstance(draining, dict):
        deadline_ms = draining.get(node_id)
    else:
        deadline_ms = 0 if node_id in draining else None
    if result["outcome"] != "drained" or deadline_ms is None:
        return f"fails ({result['outcome']}: {result['message'][:120]})"
    if abs(int(deadline_ms) - int(deadline.timestamp() * 1000)) > 1000:
        return f"degraded (deadline {deadline_ms} not the one given)"
    return "works"


def _impact_verdict(result: dict[str, Any], ray: Any) -> tuple[str, str]:
    job_id = ray.get_runtime_context().get_job_id()
    message = str(result["message"])
    jobs = {job["job_id"]: job for job in result["impacted_jobs"]}
    if "impact unknown" in message:
        return "degraded", message[message.find("impact unknown") :][:200]
    job = jobs.get(job_id)
    if job is None or job["tasks_running"] < 1:
        return "fails", f"the sample job {job_id} is not named with its running tasks"
    unknown = [reason for reason in job["reasons"] if "unknown" in reason]
    if unknown:
        return "degraded", unknown[0][:200]
    return "works", f"{job['tasks_running']} tasks, verdict {job['verdict']}"


def _capacity_verdict(gcs: Any, answer: dict[str, Any]) -> tuple[str, str]:
    from ray.core.generated import autoscaler_pb2

    (request,) = answer.get("capacity_requests") or [{}]
    if request.get("status") != "requested":
        return "fails", f"{request.get('status')}: {request.get('reason')}"[:200]
    reply = autoscaler_pb2.GetClusterResourceStateReply()
    reply.ParseFromString(gcs.get_cluster_resource_state())
    state = reply.cluster_resource_state
    asked = [
        (dict(bundle.request.resources_bundle), bundle)
        for constraint in state.cluster_resource_constraints
        for bundle in constraint.resource_requests
    ]
    wanted = {str(k): float(v) for k, v in request["bundles"][0].items()}
    matching = [bundle for resources, bundle in asked if resources == wanted]
    if not matching:
        return "fails", f"no cluster constraint {wanted} in the GCS (found {asked})"[:200]
    selectors = getattr(matching[0].request, "label_selectors", None)
    if request.get("label_selector") and not selectors:
        return "degraded", f"{wanted} asked without its label selector"
    return "works", f"{request['node_type']} asked as {wanted}"


def _support(env: dict[str, str]) -> Any:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from ray_hooks import compat; "
            "print(json.dumps(compat.probe().to_json()))",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return json.loads(done.stdout) if done.returncode == 0 else done.stderr[-300:]


def _table_row(row: dict[str, Any]) -> str:
    cells = [
        row["ray"],
        *(str(row.get(part, row.get("error", "?"))) for part in ("drain", "impact", "capacity")),
    ]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
