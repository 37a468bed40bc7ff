"""Benchmark: how fast and how cheaply a running task learns that its node is going.

`make bench-deadline` measures `ray_hooks.preemption` on real local Ray clusters:

1. latency: over `--drains` drains by the responder (default 200; five nodes at a time, each
   with two actors watching: the node's watcher and a follower), the delay from the moment
   the GCS accepted the drain (ray_hooks.drain's `issued_at`) to the moment the actor's
   `on_notice` callback ran; p50, p99, max; then a quarter as many drains by another party
   (`GcsClient.drain_node`, no hint: what the poll alone gives);
2. cost: calls to the GCS's GetDrainingNodes per second, as the GCS itself counts them (the
   event stats it prints into `gcs_server.out`, every second here), with 0, 40 and 2,000
   watching loops on 4 nodes (5 worker processes per node, the loops as threads in them);
3. what it saves: the checkpoint scenario of tests/preemption_scenario.py with the
   responder and under Ray alone, side by side (the actor's checkpoint done before the kill?
   steps of work done twice).

Results go to tests/benchmarks/results/deadline.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.benchmarks.report import machine, machine_line, publish, pyplot, replot_option, saved
from tests.benchmarks.report import table as markdown_table
from tests.ray_hooks_support import environment

NODES = 4
WATCHERS = (0, 40, 2000)
COUNT_WINDOW_S = 30.0
FAST_DUMPS = {"RAY_event_stats_print_interval_ms": "1000"}
WORKERS_PER_ROUND = 5  # the head and five workers: the machine's limit of six raylets


class Told:
    """An actor that watches its node and remembers when it was told to go."""

    def __init__(self) -> None:
        from ray_hooks import preemption

        self.told_at: float | None = None
        self._watch = preemption.on_notice(self._told)
        self._watch.__enter__()
        preemption.deadline()

    def _told(self, _deadline: Any) -> None:
        self.told_at = time.time()

    def when(self) -> float | None:
        return self.told_at


class Watching:
    """An actor running `threads` watching loops, as that many tasks polling would."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []

    def start(self, threads: int) -> int:
        from ray_hooks import preemption

        def watch() -> None:
            while True:
                preemption.deadline()
                time.sleep(0.1)

        for _ in range(threads):
            thread = threading.Thread(target=watch, daemon=True)
            thread.start()
            self._threads.append(thread)
        return len(self._threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drains", type=int, default=200)
    replot_option(parser, "deadline")
    args = parser.parse_args(argv)
    report = saved("deadline") if args.replot else _run(args.drains)
    publish("deadline", report, _markdown(report), plot)
    return 0


def _run(drains: int) -> dict[str, Any]:
    from tests.preemption_scenario import interrupt

    started = time.monotonic()
    info = machine()
    cost = _cost()  # each phase printed once done, so a later failure loses nothing
    print(f"cost: {json.dumps(cost)}", file=sys.stderr)
    latency = [_latency(drains, by_responder=True), _latency(drains // 4, by_responder=False)]
    print(f"latency: {json.dumps(latency)}", file=sys.stderr)
    scenario = [asdict(interrupt(responder=True)), asdict(interrupt(responder=False))]
    return {
        "machine": info,
        "poll_s": float(os.environ.get("RAY_HOOKS_PREEMPTION_POLL_S", "1.0")),
        "latency": latency,
        "cost": cost,
        "checkpoint_scenario": scenario,
        "bench_seconds": round(time.monotonic() - started, 1),
    }


# ---------------------------------------------------------------- 1. latency


def _latency(drains: int, by_responder: bool) -> dict[str, Any]:
    """`drains` drains, five nodes a round; by the responder's own drain (ray_hooks.drain,
    which hints the node's watcher) or by anyone else (`GcsClient.drain_node`: the poll)."""
    import ray
    from ray._raylet import GcsClient
    from ray.cluster_utils import Cluster
    from ray.core.generated import autoscaler_pb2
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ray_hooks.drain import DrainOrder, send_drains
    from ray_hooks.nodes import list_nodes

    preemption = autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    delays: list[float] = []
    try:
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        gcs = GcsClient(address=cluster.gcs_address)
        told = ray.remote(num_cpus=0.1)(Told)
        while len(delays) < 2 * drains:  # two actors per drained node
            nodes = [cluster.add_node(num_cpus=1, wait=False) for _ in range(WORKERS_PER_ROUND)]
            cluster.wait_for_nodes()
            actors = [
                told.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)
                ).remote()
                for node in nodes
                for _ in range(2)
            ]
            ray.get([actor.when.remote() for actor in actors], timeout=120)
            deadline = datetime.now(UTC) + timedelta(seconds=600)
            accepted: dict[str, float] = {}
            if by_responder:
                ids = {node.node_id for node in nodes}
                orders = [
                    DrainOrder(node, deadline, "bench")
                    for node in list_nodes(gcs)
                    if node.node_id in ids
                ]
                for node_id, drain in send_drains(gcs, orders).items():
                    assert drain.issued_at is not None, drain
                    accepted[node_id] = drain.issued_at.timestamp()
            else:
                for node in nodes:
                    gcs.drain_node(
                        node.node_id, preemption, "bench", int(deadline.timestamp() * 1000)
                    )
                    accepted[node.node_id] = time.time()
            time.sleep(2.5)
            for index, actor in enumerate(actors):
                when = ray.get(actor.when.remote(), timeout=60)
                node_id = nodes[index // 2].node_id
                if when is not None:
                    delays.append(when - accepted[node_id])
            for node in nodes:
                cluster.remove_node(node, allow_graceful=False)
            print(f"  {len(delays) // 2} / {drains}", file=sys.stderr)
    finally:
        ray.shutdown()
        cluster.shutdown()
    ordered = sorted(delays)
    return {
        "drained_by": "responder" if by_responder else "another party",
        "drains": len(delays) // 2,
        "signals": len(delays),
        "delays_s": [round(d, 4) for d in delays],
        "p50_s": round(ordered[len(ordered) // 2], 3),
        "p99_s": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 3),
        "max_s": round(ordered[-1], 3),
    }


# ---------------------------------------------------------------- 2. cost


def _cost() -> list[dict[str, Any]]:
    with environment(FAST_DUMPS):
        return _cost_rows()


def _cost_rows() -> list[dict[str, Any]]:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    rows: list[dict[str, Any]] = []
    try:
        nodes = [cluster.add_node(num_cpus=2) for _ in range(NODES)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        debug_state = Path(cluster.head_node.get_session_dir_path(), "logs", "gcs_server.out")
        watching = ray.remote(num_cpus=0.01)(Watching)
        processes = 5
        started = 0
        for watchers in WATCHERS:
            actors: list[Any] = []
            if watchers:
                per_process = max(1, watchers // (NODES * processes))
                for node in nodes:
                    where = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
                    actors += [
                        watching.options(scheduling_strategy=where).remote()
                        for _ in range(processes)
                    ]
                started = sum(
                    ray.get([actor.start.remote(per_process) for actor in actors], timeout=300)
                )
            time.sleep(5)  # the watches are running
            before, at = _gcs_calls(debug_state), time.monotonic()
            time.sleep(COUNT_WINDOW_S)
            calls, seconds = _gcs_calls(debug_state) - before, time.monotonic() - at
            rows.append(
                {
                    "watching_tasks": started if watchers else 0,
                    "processes": len(actors),
                    "gcs_calls_per_s": round(calls / seconds, 2),
                    "per_node_per_s": round(calls / seconds / NODES, 2),
                }
            )
            for actor in actors:
                ray.kill(actor)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return rows


def _gcs_calls(gcs_log: Path) -> int:
    """GetDrainingNodes calls the GCS has served, from the last event stats it printed."""
    if not gcs_log.exists():
        raise RuntimeError(f"the GCS wrote no {gcs_log}")
    served = re.findall(r"grpc_server\.GetDrainingNodes - (\d+) total", gcs_log.read_text())
    return int(served[-1]) if served else 0


# ---------------------------------------------------------------- report


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Deadline signal: drain accepted → seen inside a running actor",
        "",
        machine_line(report["machine"]),
        "",
        f"Watcher poll period {report['poll_s']} s; `make bench-deadline`.",
        "",
        markdown_table(
            ["drained by", "drains", "signals", "p50 s", "p99 s", "max s"],
            [
                [
                    row.get("drained_by", "another party"),
                    row["drains"],
                    row["signals"],
                    row["p50_s"],
                    row["p99_s"],
                    row["max_s"],
                ]
                for row in _latencies(report)
            ],
        ),
        "",
        f"GetDrainingNodes calls the GCS served, {NODES} nodes, {COUNT_WINDOW_S:.0f} s windows:",
        "",
        markdown_table(
            ["watching tasks", "processes", "GCS calls/s", "per node per s"],
            [
                [r["watching_tasks"], r["processes"], r["gcs_calls_per_s"], r["per_node_per_s"]]
                for r in report["cost"]
            ],
        ),
        "",
        "One interrupted worker, notice window scaled to 12 s, an actor whose checkpoint takes"
        " 30 % of it and 2 tasks three windows long that save on the signal:",
        "",
        markdown_table(
            [
                "",
                "death booked as",
                "checkpoint done s after notice",
                "killed s",
                "steps done twice",
            ],
            [
                [
                    "with responder" if run["responder"] else "Ray alone",
                    run["death_reason"],
                    "never" if run["checkpoint_done_s"] is None else run["checkpoint_done_s"],
                    run["killed_s"],
                    run["repeated_steps"],
                ]
                for run in report["checkpoint_scenario"]
            ],
        ),
    ]
    return "\n".join(lines)


def _latencies(report: dict[str, Any]) -> list[dict[str, Any]]:
    latency = report["latency"]
    return latency if isinstance(latency, list) else [latency]  # one row before the hint


def plot(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for row in _latencies(report):
        delays = sorted(row["delays_s"])
        label = f"drained by {row.get('drained_by', 'another party')}"
        left.plot(delays, [(n + 1) / len(delays) for n in range(len(delays))], label=label)
    left.axvline(1.0, linestyle="--", color="grey")
    left.legend()
    left.set_xlabel("drain accepted → callback in the actor (s)")
    left.set_ylabel("share of signals")
    left.set_title("signal delay (CDF)")
    cost = report["cost"]
    right.bar([str(r["watching_tasks"]) for r in cost], [r["per_node_per_s"] for r in cost])
    right.axhline(1.0, linestyle="--", color="grey")
    right.set_xlabel("tasks watching")
    right.set_ylabel("GCS GetDrainingNodes calls per node per s")
    right.set_title("cost")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
