"""Benchmark: the responder's verdict per job against what Ray then really did, on randomized jobs.

`make bench-verdicts` (not part of `make test`). A seeded generator (the seed is printed;
`--seed`, `--count`) draws each job's composition at random: plain tasks with max_retries
0 / 1 / Ray's default running on the node, actors with max_restarts 0 / 1 / -1, `ray.put`
objects, task returns stored there, objects and actors owned by a worker there, placement
groups with a bundle there, and sometimes the job's driver itself on the node. Each job is
its own driver process (tests.scenarios.job). Per round, four spot workers of one real local
Ray cluster get several jobs each; the four spot warnings go to `python -m ray_hooks respond`
in one request (each job's verdict is read from results[].impacted_jobs[]); the workers are
killed the way EC2 takes a spot instance (SIGKILL of the raylet and its workers, and of the
drivers running there) at the termination time; then each job reports what came back.

Printed and written to tests/benchmarks/results/verdicts.{md,json}: the table verdict x real
outcome, the accuracy (`will-recover` is right when nothing was lost; `at-risk` and `lost`
are right when something was), the number of jobs judged `will-recover` that lost something
(target 0) - with and without the one class the verdict cannot see: work of a task submitted
with max_retries=0, still running at the kill or its return stored on the node (Ray 2.60
publishes no task's max_retries).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.benchmarks.report import (
    machine,
    machine_line,
    replot_option,
    saved,
    table,
    write_results,
)
from tests.scenarios.cluster import PreemptibleCluster
from tests.scenarios.jobs import NAMESPACE, Job, play, start_gate

NAME = "verdicts"
NODES_PER_ROUND = 4
VERDICTS = ("will-recover", "at-risk", "lost", "not-listed")
KINDS = (
    ("task", 5),
    ("actor", 4),
    ("put", 2),
    ("return", 2),
    ("owned-object", 1),
    ("owned-actor", 1),
    ("pg", 1),
)


def draw_job(rng: random.Random) -> Job:
    """One job's composition, at random."""
    kinds = [kind for kind, _ in KINDS]
    weights = [weight for _, weight in KINDS]
    items: list[dict[str, Any]] = []
    for kind in rng.choices(kinds, weights, k=rng.choice((1, 1, 2, 2, 3))):
        item: dict[str, Any] = {"kind": kind}
        if kind in {"task", "return"}:
            item["max_retries"] = rng.choice((0, 1, None))
        if kind == "actor":
            item["max_restarts"] = rng.choice((0, 1, -1))
        items.append(item)
    return Job(items, driver_on_node=rng.random() < 0.06)


def unseen_class(job: Job) -> bool:
    """Work of a max_retries=0 task: running at the kill, or its return stored on the node.
    Ray 2.60 publishes no task's max_retries (only its owner holds it): nothing to read."""
    return any(
        item["kind"] in {"task", "return"} and item.get("max_retries") == 0 for item in job.items
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None, help="generator seed (default: random)")
    parser.add_argument("--count", type=int, default=200, help="jobs to judge (default 200)")
    parser.add_argument("--jobs-per-node", type=int, default=4)
    parser.add_argument("--window", type=float, default=14.0, help="seconds, warning to kill")
    replot_option(parser, NAME)
    args = parser.parse_args(argv)
    if args.replot:
        report = scored(saved(NAME))
        markdown = render(report)
        write_results(NAME, report, markdown)
        print(markdown)
        return 0
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"seed {seed} (rerun with --seed {seed})", flush=True)
    rng = random.Random(seed)
    info = machine()
    started = time.monotonic()
    jobs, deaths = run(rng, args.count, args.jobs_per_node, args.window)
    report = summarize(jobs, deaths, seed, info, time.monotonic() - started, args)
    markdown = render(report)
    write_results(NAME, report, markdown)
    print(markdown)
    print(f"\nwritten: tests/benchmarks/results/{NAME}.json, {NAME}.md")
    return 0


def run(
    rng: random.Random, count: int, per_node: int, window_s: float
) -> tuple[list[Job], list[str]]:
    import ray

    jobs: list[Job] = []
    deaths: list[str] = []
    logs = Path(tempfile.mkdtemp(prefix="bench-verdicts-"))
    with PreemptibleCluster() as cluster:
        spare = cluster.add_worker()
        ray.init(
            address=cluster.address,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level="ERROR",
        )
        gate_name = "bench-gate"
        gate = start_gate(cluster.head_node_id, gate_name)
        ray.get(gate.count.remote())
        number = 0
        while len(jobs) < count:
            number += 1
            doomed = [cluster.add_worker() for _ in range(NODES_PER_ROUND)]
            cluster.wait_for_workers()
            left = count - len(jobs)
            plan: dict[str, list[Job]] = {}
            for index, worker in enumerate(doomed):
                share = min(per_node, max(0, left - index * per_node))
                if share:
                    plan[worker.instance_id] = [draw_job(rng) for _ in range(share)]
            round_ = play(
                cluster,
                spare,
                plan,
                number=number,
                gate_name=gate_name,
                window_s=window_s,
                logs=logs,
            )
            for worker in doomed:
                if worker.instance_id in cluster.workers:  # got no jobs: not played
                    cluster.kill(worker)
            jobs.extend(round_.jobs)
            deaths.extend(death.reason for death in round_.deaths.values())
            lost = sum(job.lost for job in round_.jobs)
            print(
                f"round {number}: {len(round_.jobs)} jobs ({lost} lost), "
                f"{len(jobs)}/{count} done, deaths "
                f"{dict(Counter(d.reason for d in round_.deaths.values()))}",
                flush=True,
            )
    shutil.rmtree(logs, ignore_errors=True)
    return jobs, deaths


def outcome_of(record: dict[str, Any]) -> str:
    """`lost` when Ray raised for something (or the driver died with the node), `not back in
    time` when the only failures are calls that had not come back within the collect window
    (on a busy machine), else `recovered`."""
    if record["driver_on_node"]:
        return "lost"
    errors = [o["error"] for o in record["outcomes"] if not o["ok"]]
    if any(error != "GetTimeoutError" for error in errors):
        return "lost"
    return "not back in time" if errors else "recovered"


OUTCOMES = ("recovered", "lost", "not back in time")


def score(records: list[dict[str, Any]]) -> dict[str, Any]:
    judged = [r for r in records if not r["setup_error"]]
    cells = Counter((r["verdict"], outcome_of(r)) for r in judged)
    definite = [r for r in judged if outcome_of(r) != "not back in time"]
    right = sum(
        (r["verdict"] == "will-recover") == (outcome_of(r) == "recovered")
        for r in definite
        if r["verdict"] in {"will-recover", "at-risk", "lost"}
    )
    return {
        "jobs": len(judged),
        "jobs_with_a_definite_outcome": len(definite),
        "table": {f"{verdict}|{outcome}": n for (verdict, outcome), n in sorted(cells.items())},
        "correct": right,
        "accuracy": right / len(definite) if definite else float("nan"),
        "will_recover_but_lost": cells[("will-recover", "lost")],
        "will_recover_not_back_in_time": cells[("will-recover", "not back in time")],
    }


def summarize(
    jobs: list[Job],
    deaths: list[str],
    seed: int,
    info: dict[str, Any],
    seconds: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    records = [
        {
            "instance_id": job.instance_id,
            "job_id": job.job_id,
            "composition": job.describe(),
            "items": job.items,
            "driver_on_node": job.driver_on_node,
            "verdict": job.verdict,
            "reasons": job.reasons,
            "outcomes": job.outcomes,
            "lost": job.lost,
            "unseen_class": unseen_class(job),
            "setup_error": job.setup_error,
        }
        for job in jobs
    ]
    report = {
        "machine": info,
        "seed": seed,
        "count": args.count,
        "jobs_per_node": args.jobs_per_node,
        "window_s": args.window,
        "seconds": round(seconds, 1),
        "deaths": dict(Counter(deaths)),
        "setup_errors": [job.setup_error for job in jobs if job.setup_error],
        "jobs": records,
    }
    return scored(report)


def scored(report: dict[str, Any]) -> dict[str, Any]:
    records = report["jobs"]
    report["all"] = score(records)
    report["without_unseen_class"] = score([r for r in records if not r["unseen_class"]])
    report["unseen_class"] = score([r for r in records if r["unseen_class"]])
    return report


def render(report: dict[str, Any]) -> str:
    lines = [
        "# Verdicts against what Ray really did (`make bench-verdicts`)",
        "",
        machine_line(report["machine"]) + ".",
        "",
        f"Seed {report['seed']}, {report['all']['jobs']} jobs judged, "
        f"{report['jobs_per_node']} jobs per doomed worker, warning {report['window_s']} s "
        f"before the kill; {report['seconds']:.0f} s in all. Deaths Ray recorded: "
        f"{report['deaths']}.",
        "",
    ]
    for title, key in (
        ("All jobs", "all"),
        ("Without the class the verdict cannot see", "without_unseen_class"),
        (
            "Only that class: a max_retries=0 task running at the kill, or its return",
            "unseen_class",
        ),
    ):
        figures = report[key]
        rows = []
        for verdict in VERDICTS:
            counts = [figures["table"].get(f"{verdict}|{outcome}", 0) for outcome in OUTCOMES]
            if any(counts):
                rows.append([verdict, *counts])
        lines += [
            f"## {title}",
            "",
            table(["verdict", "really recovered", "really lost", "not back in time"], rows),
            "",
            f"Accuracy {figures['accuracy']:.1%} ({figures['correct']} of "
            f"{figures['jobs_with_a_definite_outcome']} jobs with a definite outcome); judged "
            f"`will-recover` but lost: **{figures['will_recover_but_lost']}**; judged "
            f"`will-recover`, not back within the collect window: "
            f"{figures['will_recover_not_back_in_time']}.",
            "",
        ]
    wrong = [
        job
        for job in report["jobs"]
        if not job["setup_error"]
        and outcome_of(job) != "not back in time"
        and (job["verdict"] == "will-recover") != (outcome_of(job) == "recovered")
    ]
    if wrong:
        lines += ["## Every job judged wrong", ""]
        lines.append(
            table(
                ["composition", "verdict", "outcome", "first reason"],
                [
                    [
                        job["composition"],
                        job["verdict"],
                        ", ".join(f"{o['kind']}:{o['error'] or 'ok'}" for o in job["outcomes"])
                        or ("driver killed" if job["driver_on_node"] else "-"),
                        (job["reasons"] or ["-"])[0][:120],
                    ]
                    for job in wrong
                ],
            )
        )
    if report["setup_errors"]:
        lines += ["", f"Jobs not judged (setup failed): {len(report['setup_errors'])}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
