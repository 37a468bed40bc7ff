"""Work saved: one spot interruption of a busy worker, Ray alone vs with the responder (issue 5).

    make bench-work-saved   # .venv/bin/python -m tests.benchmarks.bench_work_saved

The seed's stress job (``004``: 512 tasks of 1 CPU, 2 minutes each) scaled down to one
machine: a few dozen 1-CPU tasks of 3-5 s each, on a real local autoscaling Ray cluster
(the real autoscaler v2, fake_multinode provider): a head without CPUs, the doomed x86
spot worker (instance i-0a1b2c3d4e5f60001, 2 CPUs) and a steady arm on-demand worker
(2 CPUs); ``max_workers`` 2, so a third node joins only to replace one. The notice window
is scaled from 120 s to 30 s with a safety margin of 5 s: tasks are much shorter than the
window minus the margin.

Every run: the job starts; 10 s later the notice; 30 s after the notice the doomed node's
raylet and everything under it are SIGKILLed (an EC2 termination gives no grace). Two
runs, each on a fresh cluster:

- "Ray alone": nothing happens at the notice; the node just dies at the deadline.
- "with responder": the notice is an EventBridge spot warning replayed through the real
  handler (``spot-responder replay --ray-address ... --keep-time``), whose command drains
  the node on the head (``ray_hooks respond``) and asks the autoscaler for a replacement.

Both runs are made twice: tasks with Ray's default of 3 retries, then the "strict" variant
where every task has ``max_retries=0`` (a job of such tasks fails when one is lost; the
figures for failures come from that pair). Every task attempt
records, from inside the task, its node, start and end to an actor on the head node, so
every figure is computed from what actually ran. Results: tests/benchmarks/results/
work_saved.{md,json,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.autoscaler_cluster import (
    FakeAutoscalingCluster,
    WorkerType,
    fake_autoscaling_cluster,
    replay_warning,
)
from tests.benchmarks import recorded_job
from tests.benchmarks.report import (
    machine,
    machine_line,
    publish,
    pyplot,
    replot_option,
    saved,
    table,
)

DOOMED_INSTANCE = "i-0a1b2c3d4e5f60001"
DOOMED_TYPE = "x86_spot_worker"
STEADY_TYPE = "arm_ondemand_worker"
REPLACEMENT_TYPE = "x86_spot_worker_2"  # the other x86 spot pool, the policy's first choice
WORKER_TYPES = (
    WorkerType(DOOMED_TYPE, "spot", "x86_64", cpus=2, instance_id=DOOMED_INSTANCE),
    WorkerType(STEADY_TYPE, "on-demand", "arm64", cpus=2),
    WorkerType(REPLACEMENT_TYPE, "spot", "x86_64", cpus=2),
)
WINDOW_S = 30  # the scaled window: termination = notice + 30 s
SAFETY_MARGIN_S = 5
NOTICE_AFTER_S = 10  # after the job started
TASKS = 60
TASK_SECONDS = (3.0, 5.0)
JOB_TIMEOUT_S = 300
JOIN_TIMEOUT_S = 90
MODES = ("ray-alone", "responder")
TITLES = {"ray-alone": "Ray alone", "responder": "with responder"}
#: Each mode runs twice: tasks with Ray's default 3 retries, then all with max_retries=0.
VARIANTS = ("retries", "strict")


# ---------------------------------------------------------------- the job (a driver process)


def plan(seed: int, strict: bool) -> list[dict[str, Any]]:
    """The same durations in every run; `strict`: every task has max_retries=0."""
    rng = random.Random(seed)
    return [
        {"index": i, "seconds": round(rng.uniform(*TASK_SECONDS), 2), "strict": strict}
        for i in range(TASKS)
    ]


# ---------------------------------------------------------------- one run


def run(mode: str, tasks: list[dict[str, Any]], log: Any) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="rsr-ws-") as tmp,
        fake_autoscaling_cluster(
            worker_types=WORKER_TYPES,
            max_workers=2,
            idle_timeout_minutes=1.0,
            include_dashboard=True,  # the impact analysis of `respond` asks the state API
        ) as cluster,
    ):
        return _run_on(cluster, mode, tasks, Path(tmp), log)


def _run_on(
    cluster: FakeAutoscalingCluster, mode: str, tasks: list[dict[str, Any]], tmp: Path, log: Any
) -> dict[str, Any]:
    doomed, steady, head = _bring_up_workers(cluster)
    log(f"{mode}: workers up (doomed {doomed[-5:]}, steady {steady[-5:]}); starting the job")
    sampler = _NodeSampler(cluster)
    sampler.start()
    driver, out_path = recorded_job.start(cluster.gcs_address, head, tasks, tmp)
    output: list[str] = []
    try:
        t0 = recorded_job.wait_for_submitted(driver, output)
        notice_at = t0 + NOTICE_AFTER_S
        termination = float(int(notice_at) + WINDOW_S)
        _sleep_until(notice_at)
        notice_sent = time.time()
        notice: dict[str, Any] | None = None
        replay_s = None
        if mode == "responder":
            notice = replay_warning(
                cluster,
                tmp,
                termination,
                event_id=f"bench-work-saved-{int(termination)}",
                safety_margin_s=SAFETY_MARGIN_S,
            )
            replay_s = time.time() - notice_sent
            asked = (notice.get("replacement") or {}).get("node_type")
            log(
                f"{mode}: replay {notice['action']} node {str(notice.get('ray_node_id'))[-5:]}"
                f" in {replay_s:.1f} s; replacement asked: {asked}"
            )
        else:
            log(f"{mode}: notice at t+{notice_sent - t0:.1f} s: nothing acts on it")
        _sleep_until(termination)
        killed_at = time.time()
        killed = (
            "already gone (the drained node exited by itself once idle)"
            if cluster.kill_node(doomed) is None
            else "SIGKILLed with its workers"
        )
        log(f"{mode}: termination at t+{killed_at - t0:.1f} s: raylet {killed}")
        driver.wait(timeout=JOB_TIMEOUT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=10)
        sampler.stop()
    if not out_path.exists():
        raise RuntimeError("the job wrote no result:\n" + "".join(output[-40:]))
    job = json.loads(out_path.read_text())
    nodes = {
        n.node_id: {"type": n.node_type, "start": n.start_time_ms / 1000, "alive": n.alive}
        for n in cluster.nodes()
        if not n.is_head
    }
    return {
        "mode": mode,
        "t0": t0,
        "notice_at": notice_sent,
        "drain_deadline": termination - SAFETY_MARGIN_S,
        "termination": termination,
        "killed_at": killed_at,
        "raylet_at_termination": killed,
        "replay_s": replay_s,
        "notice": notice,
        "doomed": doomed,
        "steady": steady,
        "nodes": nodes,
        "node_seen": sampler.seen,
        "tasks": tasks,
        "job": job,
    }


def _bring_up_workers(cluster: FakeAutoscalingCluster) -> tuple[str, str, str]:
    """The doomed and the steady worker, asked for by marker; then the request is cleared,
    so that nothing but the job's own demand (or the responder) asks for capacity."""
    from ray.autoscaler.v2.sdk import request_cluster_resources

    types = (DOOMED_TYPE, STEADY_TYPE)
    bundles = [{"resources": {"CPU": 1.0, t: 1.0}, "label_selector": {}} for t in types]
    request_cluster_resources(cluster.gcs_address, bundles)

    def both() -> bool:
        return {n.node_type for n in cluster.alive_workers()} >= {DOOMED_TYPE, STEADY_TYPE}

    cluster.wait_for(both, JOIN_TIMEOUT_S, "the doomed and the steady worker")
    request_cluster_resources(cluster.gcs_address, [])
    by_type = {n.node_type: n.node_id for n in cluster.alive_workers()}
    (head,) = [n.node_id for n in cluster.nodes() if n.is_head and n.alive]
    return by_type[DOOMED_TYPE], by_type[STEADY_TYPE], head


class _NodeSampler(threading.Thread):
    """When each worker node was first and last seen alive (GCS, every 0.5 s)."""

    def __init__(self, cluster: FakeAutoscalingCluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.seen: dict[str, list[float]] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            with contextlib.suppress(Exception):
                now = time.time()
                for node in self.cluster.alive_workers():
                    self.seen.setdefault(node.node_id, [now, now])[1] = now
            self._stop_event.wait(0.5)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=15)


def _sleep_until(at: float) -> None:
    time.sleep(max(0.0, at - time.time()))


# ---------------------------------------------------------------- figures


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    job, doomed = result["job"], result["doomed"]
    t0, notice_at, killed_at = result["t0"], result["notice_at"], result["killed_at"]
    ended = {(i, node, round(started, 6)) for i, node, started, _ in job["ends"]}
    attempts = job["starts"]
    killed = [a for a in attempts if (a[0], a[1], round(a[2], 6)) not in ended]
    failed = [int(i) for i, r in job["results"].items() if not r["ok"]]
    doomed_starts = [a[2] for a in attempts if a[1] == doomed]
    doomed_ends = [e[3] for e in job["ends"] if e[1] == doomed]
    finished_after_notice = [e for e in job["ends"] if e[1] == doomed and e[2] > notice_at]
    drain_at = None
    if result["notice"] and result["notice"].get("drain_issued_at"):
        drain_at = datetime.fromisoformat(result["notice"]["drain_issued_at"]).timestamp()
    new_nodes = sorted(
        (info["start"], node_id, info["type"])
        for node_id, info in result["nodes"].items()
        if node_id not in (doomed, result["steady"]) and info["start"] > t0
    )
    replacement = new_nodes[0] if new_nodes else None
    return {
        "tasks": len(result["tasks"]),
        "max_retries": 0 if result["tasks"][0]["strict"] else 3,
        "started_on_doomed_after_notice": len([t for t in doomed_starts if t > notice_at]),
        "started_on_doomed_after_drain": (
            len([t for t in doomed_starts if t > drain_at]) if drain_at else None
        ),
        "notice_to_drain_s": round(drain_at - notice_at, 2) if drain_at else None,
        "last_start_on_doomed_after_notice_s": (
            round(max(doomed_starts) - notice_at, 2) if doomed_starts else None
        ),
        "started_on_doomed_after_notice_finished": len(finished_after_notice),
        "last_end_on_doomed_before_termination_s": (
            round(killed_at - max(doomed_ends), 2) if doomed_ends else None
        ),
        "attempts_killed": len(killed),
        "cpu_seconds_killed": round(sum(max(0.0, killed_at - a[2]) for a in killed), 2),
        "task_retries": len(attempts) - len({a[0] for a in attempts}),
        "tasks_failed": len(failed),
        "makespan_s": round(job["finished"] - t0, 2),
        "notice_to_replacement_s": round(replacement[0] - notice_at, 2) if replacement else None,
        "replacement_type": replacement[2] if replacement else None,
        "replacement_node": replacement[1] if replacement else None,
        "raylet_at_termination": result["raylet_at_termination"],
        "responder_latency_s": round(result["replay_s"], 2) if result["replay_s"] else None,
        "notice_after_job_start_s": round(notice_at - t0, 2),
        "kill_after_notice_s": round(killed_at - notice_at, 2),
    }


#: The table's rows: (label, variant whose runs it reads, summary key, how a value reads).
#: Every cell shows each run's value, in run order.
ROWS: tuple[tuple[str, str, str, str], ...] = (
    (
        "tasks started on the doomed node after the notice",
        "retries",
        "started_on_doomed_after_notice",
        "count",
    ),
    (
        "tasks started on the doomed node after the drain was issued",
        "retries",
        "started_on_doomed_after_drain",
        "count",
    ),
    (
        "tasks started on the doomed node after the notice that finished there",
        "retries",
        "started_on_doomed_after_notice_finished",
        "count",
    ),
    (
        "the doomed node's last task ended, s before the termination",
        "retries",
        "last_end_on_doomed_before_termination_s",
        "s",
    ),
    ("notice -> drain issued (responder latency), s", "retries", "notice_to_drain_s", "s"),
    (
        "last task start on the doomed node after the notice, s",
        "retries",
        "last_start_on_doomed_after_notice_s",
        "s",
    ),
    ("task attempts killed at the termination", "retries", "attempts_killed", "count"),
    ("CPU-seconds of work killed", "retries", "cpu_seconds_killed", "s"),
    ("task retries", "retries", "task_retries", "count"),
    ("tasks failed", "retries", "tasks_failed", "count"),
    ("job makespan, s", "retries", "makespan_s", "s"),
    ("notice -> replacement capacity joined, s", "retries", "notice_to_replacement_s", "s"),
    ("replacement node type", "retries", "replacement_type", "text"),
    ("doomed node at its termination time", "retries", "raylet_at_termination", "text"),
    ("**max_retries=0:** tasks failed", "strict", "tasks_failed", "count"),
    ("max_retries=0: the job", "strict", "job_result", "text"),
    ("max_retries=0: CPU-seconds of work killed", "strict", "cpu_seconds_killed", "s"),
    ("max_retries=0: job makespan, s", "strict", "makespan_s", "s"),
    (
        "max_retries=0: tasks started on the doomed node after the notice",
        "strict",
        "started_on_doomed_after_notice",
        "count",
    ),
    (
        "max_retries=0: tasks started on the doomed node after the drain",
        "strict",
        "started_on_doomed_after_drain",
        "count",
    ),
    ("max_retries=0: notice -> drain issued, s", "strict", "notice_to_drain_s", "s"),
)


def _value(summary: dict[str, Any], key: str) -> Any:
    if key == "job_result":
        return "fails" if summary["tasks_failed"] else "succeeds"
    return summary[key]


def cell(values: list[Any], how: str) -> str:
    """Each run's value, in run order; `-` where a run has none (no drain, no replacement)."""
    shown = ["-" if v is None else f"{v:.1f}" if how == "s" else str(v) for v in values]
    if how == "text" and len(set(shown)) == 1:
        return shown[0] + (f" (all {len(shown)})" if len(shown) > 1 else "")
    return " · ".join(shown)


def headline(summaries: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """What the issue asks to see, summed over every run of each mode."""
    ours = [s for variant in VARIANTS for s in summaries[variant]["responder"]]
    alone = [s for variant in VARIANTS for s in summaries[variant]["ray-alone"]]
    latency = sorted(s["notice_to_drain_s"] for s in ours if s["notice_to_drain_s"] is not None)
    idle = sorted(s["last_end_on_doomed_before_termination_s"] or 0.0 for s in ours)

    def total(runs: list[dict[str, Any]], key: str) -> float:
        return sum(s[key] or 0 for s in runs)

    return (
        f"**With the responder**, over all {len(ours)} runs of both variants: "
        f"{total(ours, 'started_on_doomed_after_drain'):.0f} tasks started on the doomed node "
        f"after the drain was issued, {total(ours, 'cpu_seconds_killed'):.1f} CPU-seconds of "
        f"work killed, {total(ours, 'tasks_failed'):.0f} tasks failed; "
        f"{total(ours, 'started_on_doomed_after_notice'):.0f} tasks started between the notice "
        f"and the drain, in the responder's own latency of {latency[0]:.1f}-{latency[-1]:.1f} s, "
        f"and {total(ours, 'started_on_doomed_after_notice_finished'):.0f} of them finished "
        f"there; the doomed node held no work from {idle[0]:.1f}-{idle[-1]:.1f} s before the "
        "termination. "
        f"**Ray alone**, over its {len(alone)} runs: "
        f"{total(alone, 'started_on_doomed_after_notice'):.0f} tasks started on the doomed node "
        f"after the notice, {total(alone, 'cpu_seconds_killed'):.1f} CPU-seconds killed, "
        f"{total(alone, 'tasks_failed'):.0f} tasks failed."
    )


def render(data: dict[str, Any]) -> str:
    summaries = data["summaries"]
    repeats = len(summaries["retries"]["responder"])
    rows = [
        [label, *(cell([_value(s, key) for s in summaries[v][m]], how) for m in MODES)]
        for label, v, key, how in ROWS
    ]
    return "\n".join(
        [
            "# Work saved: one spot interruption, Ray alone vs with the responder",
            "",
            machine_line(data["machine"]),
            "",
            f"Real local autoscaling Ray cluster (autoscaler v2, fake_multinode): head with 0 "
            f"CPU, doomed `{DOOMED_TYPE}` (2 CPU, {DOOMED_INSTANCE}), steady `{STEADY_TYPE}` "
            f"(2 CPU), `max_workers` 2. Job (the seed's stress job scaled down): {TASKS} tasks "
            f"of 1 CPU, {TASK_SECONDS[0]:.0f}-{TASK_SECONDS[1]:.0f} s each. Notice "
            f"{NOTICE_AFTER_S} s after the job started; window scaled from 120 s to {WINDOW_S} s "
            f"(the doomed raylet and its workers SIGKILLed {WINDOW_S} s after the notice); "
            f"safety margin {SAFETY_MARGIN_S} s, so the drain deadline is "
            f"{WINDOW_S - SAFETY_MARGIN_S} s after the notice. 'Ray alone': nothing acts on "
            "the notice. 'With responder': the notice is an EventBridge spot warning replayed "
            "through the real handler (`spot-responder replay --ray-address ... --keep-time`, "
            "a process of its own, as a user runs it): drain on the head, then a replacement "
            f"request. {repeats} rounds of four runs, each run on a fresh cluster: both modes "
            "with Ray's default 3 retries per task, then both with every task `max_retries=0`. "
            "Each cell lists every round's figure, in order. Figures come from what each task "
            "attempt recorded from inside the task (node, start, end); 'after the notice' "
            "counts from the moment the notice was handed to the responder, so it includes the "
            "responder's own latency until the drain was issued.",
            "",
            headline(summaries),
            "",
            table(["", *(TITLES[m] for m in MODES)], rows),
            "",
            "Running tasks per node, the first default-retries run of each mode:",
            "",
            "![running tasks per node](work_saved.png)",
        ]
    )


def _running(changes: list[tuple[float, int]], until: float) -> tuple[list[float], list[int]]:
    """Running tasks, the most in each 0.5 s: a task ending as the next one starts on the
    same CPU (a gap of some milliseconds) is not drawn as a dip to zero."""
    step = 0.5
    bins = [0] * (int(until / step) + 2)
    running, ordered = 0, sorted(changes)
    for number, (x, delta) in enumerate(ordered):
        running += delta
        end = ordered[number + 1][0] if number + 1 < len(ordered) else until
        if end - x < 0.05 and delta < 0:
            continue  # a gap too short to see
        for b in range(int(x / step), min(len(bins), int(end / step) + 1)):
            bins[b] = max(bins[b], running)
    return [b * step for b in range(len(bins))], bins


def plot(data: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(len(MODES), 1, figsize=(11, 7), sharex=True, sharey=True)
    for ax, mode in zip(axes, MODES, strict=True):
        result = data["runs"]["retries"][mode][0]
        summary = data["summaries"]["retries"][mode][0]
        t0 = result["t0"]
        ends = {(i, node, round(started, 6)): at for i, node, started, at in result["job"]["ends"]}
        roles = {
            result["doomed"]: (f"doomed {DOOMED_TYPE}", "tab:red"),
            result["steady"]: (f"steady {STEADY_TYPE}", "tab:blue"),
        }
        if summary["replacement_node"]:
            roles[summary["replacement_node"]] = (
                f"replacement {summary['replacement_type']}",
                "tab:green",
            )
        events: dict[str, list[tuple[float, int]]] = {node: [] for node in roles}
        for index, node, started in result["job"]["starts"]:
            end = ends.get((index, node, round(started, 6)), result["killed_at"])
            events.setdefault(node, []).extend([(started - t0, 1), (end - t0, -1)])
        for offset, (node, changes) in enumerate(events.items()):
            label, color = roles.get(node, (f"node {node[-5:]}", "tab:gray"))
            xs, ys = _running(changes, result["job"]["finished"] - t0)
            shifted = [y + 0.04 * (offset - 1) for y in ys]  # overlapping lines stay visible
            ax.step(xs, shifted, where="post", label=label, color=color, linewidth=1.8)
        marks = [
            (result["notice_at"], "notice", "black", "--"),
            (result["drain_deadline"], "drain deadline", "gray", ":"),
            (result["killed_at"], "termination (kill)", "tab:red", "-"),
        ]
        if summary["notice_to_drain_s"] is not None:
            drained = result["notice_at"] + summary["notice_to_drain_s"]
            marks.append((drained, "drain issued", "tab:orange", "--"))
        if summary["notice_to_replacement_s"] is not None:
            joined = result["notice_at"] + summary["notice_to_replacement_s"]
            marks.append((joined, "replacement joined", "tab:green", "-."))
        for at, label, color, style in marks:
            ax.axvline(at - t0, color=color, linestyle=style, linewidth=1, label=label)
        ax.set_title(
            f"{TITLES[mode]}: {summary['started_on_doomed_after_notice']} tasks started on the "
            f"doomed node after the notice, {summary['cpu_seconds_killed']:.1f} CPU-s killed, "
            f"{summary['task_retries']} retries, makespan {summary['makespan_s']:.0f} s",
            fontsize=10,
        )
        ax.set_ylabel("running tasks")
        ax.set_yticks([0, 1, 2])
        ax.set_ylim(-0.2, 2.9)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=7, ncol=4)
    axes[-1].set_xlabel("seconds since the job started")
    fig.suptitle(
        f"Running 1-CPU tasks per node ({TASKS} tasks of 3-5 s; notice window scaled to "
        f"{WINDOW_S} s, safety margin {SAFETY_MARGIN_S} s)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=4, help="task durations (4)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the four runs (3)")
    replot_option(parser, "work_saved")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    if args.replot:
        data = saved("work_saved")
    else:
        info = machine()
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            variant: {mode: [] for mode in MODES} for variant in VARIANTS
        }
        # Rounds of all four runs, so that a noisy minute touches every mode and variant alike.
        for repeat in range(1, args.repeats + 1):
            for variant in VARIANTS:
                tasks = plan(args.seed, strict=variant == "strict")
                for mode in MODES:
                    retries = 0 if variant == "strict" else 3
                    log(f"--- round {repeat}: {TITLES[mode]}, tasks with max_retries={retries}")
                    runs[variant][mode].append(run(mode, tasks, log))
        data = {
            "benchmark": "work_saved",
            "machine": info,
            "settings": {
                "tasks": TASKS,
                "task_seconds": TASK_SECONDS,
                "window_s": WINDOW_S,
                "safety_margin_s": SAFETY_MARGIN_S,
                "notice_after_job_start_s": NOTICE_AFTER_S,
                "seed": args.seed,
                "repeats": args.repeats,
            },
            "runs": runs,
        }
    # Derived from the raw runs every time, so that a replot shows what the code computes now.
    data["summaries"] = {
        variant: {mode: [summarize(r) for r in results] for mode, results in by_mode.items()}
        for variant, by_mode in data["runs"].items()
    }
    print()
    publish("work_saved", data, render(data), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
