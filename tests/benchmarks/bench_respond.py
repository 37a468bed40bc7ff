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

import argparse
import asyncio
import json
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
from tests.benchmarks.report import machine, machine_line, publish, pyplot, replot_option, saved

SIZES = (1, 100, 2_000)
ANALYSE_RUNS = 3
PUT_OBJECTS = 20
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    replot_option(parser, "respond")
    args = parser.parse_args(argv)
    report = saved("respond") if args.replot else _run()
    publish("respond", report, _markdown(report), plot)
    return 0


def _run() -> dict[str, Any]:
    import ray

    started = time.monotonic()
    info = machine()
    rows: list[dict[str, Any]] = []
    print(f"starting a local Ray cluster (head + {len(WORKERS)} workers)...", file=sys.stderr)
    with EmbeddedRayCluster(workers=WORKERS, head=HEAD_NODE) as cluster:
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        for size, worker in zip(SIZES, WORKERS, strict=True):
            rows.append(_measure(cluster, worker, size))
            print(_row_text(rows[-1]), file=sys.stderr)
    return {
        "machine": info,
        "running_tasks_are": HOW,
        "runs": rows,
        "bench_seconds": round(time.monotonic() - started, 1),
    }


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


def _row_text(row: dict[str, Any]) -> str:
    drain = row["drain"]
    return (
        f"{row['tasks']} tasks: drain issued {drain['drain_s']:.3f} s, analysis done "
        f"{drain['total_s']:.3f} s, {drain['response_bytes']} bytes, {row['verdict']}"
    )


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# `ray_hooks respond`: drain issued vs analysis done",
        "",
        machine_line(report["machine"]) + ".",
        "",
        "Command: `make bench-respond`.",
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
    lines += ["", "![drain issued vs analysis done](respond.png)", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Per size: process spawn → drain issued, then → analysis done, then → exit."""
    plt = pyplot()

    rows = report["runs"]
    labels = [f"{row['tasks']:,} running task{'' if row['tasks'] == 1 else 's'}" for row in rows]
    to_drain = [row["drain"]["spawn_to_drain_issued_s"] for row in rows]
    # `total_s` counts from the start of ray_hooks; the interpreter start comes before it.
    interpreter = [
        row["drain"]["spawn_to_drain_issued_s"] - row["drain"]["drain_s"] for row in rows
    ]
    to_analysed = [row["drain"]["total_s"] + i for row, i in zip(rows, interpreter, strict=True)]
    to_exit = [row["drain"]["spawn_to_exit_s"] for row in rows]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    y = range(len(rows))
    ax.barh(y, to_drain, color="tab:green", label="spawn → drain issued")
    analysis = [a - d for a, d in zip(to_analysed, to_drain, strict=True)]
    ax.barh(y, analysis, left=to_drain, color="tab:blue", label="→ analysis done")
    rest = [e - a for e, a in zip(to_exit, to_analysed, strict=True)]
    ax.barh(y, rest, left=to_analysed, color="tab:gray", label="→ process exit")
    for n, (drain, end) in enumerate(zip(to_drain, to_exit, strict=True)):
        ax.text(drain, n + 0.3, f" {drain:.2f} s", fontsize=8, va="center")
        ax.text(end, n, f" {end:.2f} s", fontsize=8, va="center")
    ax.set_yticks(list(y), labels)
    ax.set_xlabel("seconds from spawning `python -m ray_hooks respond`")
    ax.set_title(
        "The drain does not wait for the analysis, however much runs on the node", fontsize=10
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
