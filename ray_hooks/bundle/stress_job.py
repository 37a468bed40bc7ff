"""The autoscaling stress job: many two-minute tasks, more than the cluster's CPUs.

Submit it through the dashboard (``ray dashboard cluster-spot.yaml`` forwards port 8265):

    ray job submit --address http://localhost:8265 --working-dir ray_hooks/bundle \\
        -- python stress_job.py --tasks 512 --seconds 120

The autoscaler adds spot workers until the pending tasks fit (``max_workers`` caps it;
``ray exec cluster-spot.yaml "ray status"`` shows it). When a spot worker gets its
two-minute notice, Ray Spot Responder drains it: no new task lands there, the running
ones finish if they can, and the ones cut off are retried (``max_retries``) on another
node. The summary at the end says where the tasks finished, by market and node group;
`spot-responder ledger jobs` shows what the interruptions did to this job.
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Sequence

import ray


@ray.remote(num_cpus=1)
def heavy_task(seconds: float) -> tuple[str, str]:
    """Hold one CPU for `seconds`, then say where it ran (market, node group)."""
    time.sleep(seconds)
    labels = ray.get_runtime_context().get_node_labels()
    market, group = labels.get("ray.io/market-type", "?"), labels.get("ray.io/node-group", "?")
    return str(market), str(group)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=120.0, help="length of one task")
    parser.add_argument(
        "--max-retries",
        type=int,
        default=3,
        help="retries of a task whose node died (0: an interruption fails the job)",
    )
    parser.add_argument(
        "--arch",
        choices=["any", "x86", "arm"],
        default="any",
        help="keep the tasks on Intel or Graviton workers (custom resource markers)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    ray.init()  # the cluster the job was submitted to
    marker = {"x86": {"Intel": 0.001}, "arm": {"Graviton": 0.001}}.get(args.arch, {})
    task = heavy_task.options(max_retries=args.max_retries, resources=marker)

    started = time.monotonic()
    pending = [task.remote(args.seconds) for _ in range(args.tasks)]
    where: collections.Counter[tuple[str, str]] = collections.Counter()
    while pending:
        done, pending = ray.wait(pending, num_returns=min(len(pending), 32), timeout=30)
        where.update(ray.get(done))
        elapsed = time.monotonic() - started
        print(f"[{elapsed:6.0f} s] {args.tasks - len(pending)}/{args.tasks} tasks done", flush=True)

    took = time.monotonic() - started
    print(f"all {args.tasks} tasks done in {took:.0f} s; where they finished:")
    for (market, group), count in where.most_common():
        print(f"  {count:5d}  {group} ({market})")


if __name__ == "__main__":
    main()
