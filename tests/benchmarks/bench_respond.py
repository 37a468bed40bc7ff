"""How long `python -m ray_hooks respond` takes, drain issued vs analysis done, by running tasks.

    make bench-respond        (or: .venv/bin/python -m tests.benchmarks.bench_respond)

A real local Ray cluster (head + one spot worker per size, at most 4 raylets, fresh temp dir
and ports); on each worker the node runs 1, 100 or 2,000 tasks that Ray reports RUNNING on
that node. 2,000 processes do not fit on this machine, so the running tasks are calls of
one async actor (max_concurrency above the count): Ray's state API reports each call as a
RUNNING task (ACTOR_TASK) on that node, which is what `ray_hooks` reads. The actor also
holds 20 `ray.put` objects there, so that the object query (raylets and owners) has work.

For each size: three analyse-only runs (no drain; the node stays), then the real run that
drains the node. Each run is the real CLI in a fresh process, fed the request on stdin, as
the SSM document runs it. Measured:

- drain issued: process start → the drain accepted by the GCS (the response's
  `timings.drain_s`, counted from the start of `python -m ray_hooks`, and wall-clock from
  the process spawn, which adds the interpreter start);
- analysis done: process start → response built (`timings.total_s`), and wall-clock until
  the process exited;
- the response's size in bytes (SSM returns at most 24,000 characters).

Writes tests/benchmarks/results/respond.md (the table) and respond.json (raw figures), with
the machine (CPU model, cores, RAM, load average) and the date.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spot_responder.cli.embedded import (
    HEAD_NODE,
    INSTANCE_ID_LABEL,
    EmbeddedNode,
    EmbeddedRayCluster,
)

SIZES = (1, 100, 2_000)
ANALYSE_RUNS = 3
PUT_OBJECTS = 20
RESULTS = Path(__file__).resolve().parent / "results"
WORKERS = tuple(
    EmbeddedNode(f"i-0b0b0b0b0b0b0{n:04d}", "x86_spot_worker", "spot", num_cpus=1)
    for n in range(1, len(SIZES) + 1)
)
HOW = (
    "calls of one async actor (max_concurrency > count) on the node; Ray's state API "
    "reports each as a RUNNING ACTOR_TASK there"
)


class Busy:
    """The async actor whose calls are the running tasks; it also holds ray.put objects."""

    def __init__(self) -> None:
        import ray

        self.kept = [ray.put(b"x" * 100_000) for _ in range(PUT_OBJECTS)]

    def ready(self) -> bool:
        return True

    async def work(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return 1


def main() -> int:
    import ray

    started = time.monotonic()
    machine = _machine()
    rows: list[dict[str, Any]] = []
    print(f"starting a local Ray cluster (head + {len(WORKERS)} workers)...", file=sys.stderr)
    with EmbeddedRayCluster(workers=WORKERS, head=HEAD_NODE) as cluster:
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        for size, worker in zip(SIZES, WORKERS, strict=True):
            rows.append(_measure(cluster, worker, size))
            print(_row_text(rows[-1]), file=sys.stderr)
    report = {
        "machine": machine,
        "running_tasks_are": HOW,
        "runs": rows,
        "bench_seconds": round(time.monotonic() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "respond.json").write_text(json.dumps(report, indent=2) + "\n")
    table = _markdown(report)
    (RESULTS / "respond.md").write_text(table)
    print(table)
    return 0


def _measure(cluster: EmbeddedRayCluster, worker: EmbeddedNode, size: int) -> dict[str, Any]:
    import ray

    node_id = cluster.node_id_for(worker.instance_id)
    busy = (
        ray.remote(num_cpus=0, max_concurrency=size + 10)(Busy)
        .options(label_selector={INSTANCE_ID_LABEL: worker.instance_id})
        .remote()
    )
    ray.get(busy.ready.remote(), timeout=60)
    calls = [busy.work.remote(3_600) for _ in range(size)]
    waited = _wait_running(cluster.address, node_id, size)
    analyses = [_respond(cluster, worker, "analyse") for _ in range(ANALYSE_RUNS)]
    drain = _respond(cluster, worker, "drain")
    ray.kill(busy)
    del calls
    job = drain["job"]
    return {
        "tasks": size,
        "ray_reported_running": job.get("tasks_running"),
        "seconds_until_ray_reported_them": round(waited, 1),
        "drain": {key: value for key, value in drain.items() if key != "job"},
        "analyse_only": [{k: v for k, v in run.items() if k != "job"} for run in analyses],
        "analysis_s_median_of_analyse_only": round(
            statistics.median(run["analysis_s"] for run in analyses), 3
        ),
        "verdict": job.get("verdict"),
        "reasons": job.get("reasons"),
        "objects": job.get("objects"),
    }


def _wait_running(address: str, node_id: str, count: int, timeout_s: float = 180) -> float:
    """Until Ray's state API reports `count` tasks RUNNING on the node (events lag ~1 s)."""
    from ray.util.state import list_tasks

    started = time.monotonic()
    while True:
        running = list_tasks(
            address=address,
            filters=[("state", "=", "RUNNING"), ("node_id", "=", node_id)],
            limit=10_000,
            timeout=30,
            raise_on_missing_output=False,
        )
        if len(running) >= count:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"only {len(running)} of {count} tasks RUNNING on {node_id[:8]}")
        time.sleep(0.5)


def _respond(cluster: EmbeddedRayCluster, worker: EmbeddedNode, action: str) -> dict[str, Any]:
    request = {
        "version": 1,
        "operation": "respond",
        "cluster": "bench",
        "request_id": f"bench-{action}-{time.time_ns()}",
        "notices": [
            {
                "notice_id": f"{worker.instance_id}#spot-interruption",
                "instance_id": worker.instance_id,
                "private_ip": None,
                "kind": "spot-interruption",
                "action": action,
                "drain_deadline": datetime.fromtimestamp(time.time() + 100, UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                ),
            }
        ],
    }
    spawned = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "ray_hooks", "respond", "--address", cluster.address],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    exited = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"ray_hooks respond exited {done.returncode}: {done.stderr[-2000:]}")
    document = json.loads(done.stdout)
    (result,) = document["results"]
    timings = document["timings"]
    issued = result["drain_issued_at"]
    jobs = result["impacted_jobs"]
    return {
        "action": action,
        "outcome": result["outcome"],
        "drain_s": timings["drain_s"],
        "total_s": timings["total_s"],
        "analysis_s": round(timings["total_s"] - timings["drain_s"], 3),
        "spawn_to_drain_issued_s": (
            round(datetime.fromisoformat(issued).timestamp() - spawned, 3) if issued else None
        ),
        "spawn_to_exit_s": round(exited - spawned, 3),
        "response_bytes": len(done.stdout.encode()),
        "job": jobs[0] if jobs else {},
    }


def _machine() -> dict[str, Any]:
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.lower().startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    ram_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    import ray

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": round(ram_kib / 1024 / 1024, 1),
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "ray": ray.__version__,
    }


def _row_text(row: dict[str, Any]) -> str:
    drain = row["drain"]
    return (
        f"{row['tasks']} tasks: drain issued {drain['drain_s']:.3f} s, analysis done "
        f"{drain['total_s']:.3f} s, {drain['response_bytes']} bytes, {row['verdict']}"
    )


def _markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# `ray_hooks respond`: drain issued vs analysis done",
        "",
        f"{machine['date']}; {machine['nproc']} cores ({machine['cpu_model']}), "
        f"{machine['ram_gib']} GiB RAM; load average at start "
        f"{', '.join(str(x) for x in machine['load_average_at_start'])} (other Ray clusters "
        f"share this machine); Python {machine['python']}, Ray {machine['ray']}.",
        "",
        f"Running tasks: {report['running_tasks_are']}. Times in seconds from the start of "
        "`python -m ray_hooks` (its `timings`); wall = from spawning the process, which adds "
        f"the interpreter's start. Analyse-only: median of {ANALYSE_RUNS} runs without drain.",
        "",
        "| running tasks | Ray reported | → drain issued | → drain issued (wall) "
        "| → analysis done | process exit (wall) | analysis only (median) | response bytes "
        "| verdict |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in report["runs"]:
        drain = row["drain"]
        lines.append(
            f"| {row['tasks']:,} | {row['ray_reported_running']:,} | {drain['drain_s']:.3f} "
            f"| {drain['spawn_to_drain_issued_s']:.3f} | {drain['total_s']:.3f} "
            f"| {drain['spawn_to_exit_s']:.3f} | {row['analysis_s_median_of_analyse_only']:.3f} "
            f"| {drain['response_bytes']:,} | {row['verdict']} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
