"""The stress job's tasks made longer than the notice window, saving their progress on it.

Each task holds one CPU for `--seconds`, in steps of `--step` seconds. While its node is not
draining it keeps its progress to itself; once the node is told to go
(`ray_hooks.preemption`), it saves its progress after every step. When the node dies and Ray
runs the task again elsewhere (for free after a preemption), the new attempt resumes from
the last step saved: a task longer than the window loses at most one step.

    ray job submit --address http://localhost:8265 --working-dir ray_hooks/bundle \\
        -- python checkpoint_job.py --tasks 64 --seconds 300 --step 5

The progress lives in a small actor on the driver's node, the head (`Progress`); a real job
saves to S3 or a shared file system the same way. At the end the job prints, per task, the steps
done and the steps done twice (work repeated because a node went away).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from typing import Any

import ray


class Progress:
    """Where each task saved its progress, and how many steps every attempt ran."""

    def __init__(self) -> None:
        self.saved: dict[int, int] = {}
        self.ran: dict[int, int] = {}

    def resume_point(self, task: int) -> int:
        return self.saved.get(task, 0)

    def save(self, task: int, steps_done: int) -> None:
        self.saved[task] = max(self.saved.get(task, 0), steps_done)

    def ran_step(self, task: int) -> None:
        self.ran[task] = self.ran.get(task, 0) + 1

    def report(self) -> dict[int, tuple[int, int]]:
        """Per task: (steps saved, steps run in all attempts)."""
        return {task: (self.saved.get(task, 0), ran) for task, ran in self.ran.items()}


def resumable_task(progress: Any, task: int, steps: int, step_s: float) -> int:
    """Run `steps` steps from where the last attempt saved; save each step once told to go."""
    from ray_hooks import preemption

    told = threading.Event()
    start = int(ray.get(progress.resume_point.remote(task)))
    with preemption.on_notice(lambda _deadline: told.set()):
        for step in range(start, steps):
            time.sleep(step_s)  # the step's work
            progress.ran_step.remote(task)
            if told.is_set():
                ray.get(progress.save.remote(task, step + 1))
    return steps - start


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=300.0, help="length of one task")
    parser.add_argument("--step", type=float, default=5.0, help="seconds between checkpoints")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    ray.init()
    steps = max(1, round(args.seconds / args.step))
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's node (the head, which no spot warning takes), not on a spot worker.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    progress: Any = ray.remote(num_cpus=0)(Progress).options(scheduling_strategy=here).remote()
    task = ray.remote(num_cpus=1)(resumable_task)
    started = time.monotonic()
    ray.get([task.remote(progress, n, steps, args.step) for n in range(args.tasks)])
    report: dict[int, tuple[int, int]] = ray.get(progress.report.remote())
    repeated = sum(ran - steps for _, ran in report.values())
    print(
        f"{args.tasks} tasks of {steps} steps in {time.monotonic() - started:.0f} s; "
        f"{repeated} step(s) run twice because a node went away"
    )


if __name__ == "__main__":
    main()
