"""Rounds of Ray jobs, each in its own driver process, on workers that are then preempted.

One round: every doomed worker gets its jobs (tests.scenarios.job), the spot warnings for all
of them go to `python -m ray_hooks respond` in one request (as the Lambda batches a cluster's
notices), each job's verdict is read from the response, the workers are killed the way EC2
takes a spot instance at the termination time (and with them the drivers that ran there),
and once Ray has recorded the deaths each job says what became of its work. The verdict is
the responder's; the outcome is what Ray then did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.scenarios.cluster import Death, PreemptibleCluster, Worker, death_of
from tests.scenarios.responder import respond, results_by_instance, warning

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "spot-scenarios"


@dataclass
class Job:
    """One job: the items it puts on its worker, whether its driver runs there too."""

    items: list[dict[str, Any]]
    driver_on_node: bool = False
    # ---- observed
    instance_id: str = ""
    job_id: str = ""
    verdict: str = ""
    reasons: list[str] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    setup_error: str = ""

    @property
    def lost(self) -> bool:
        """What Ray really did: something of the job did not come back (or its driver died)."""
        return self.driver_on_node or not self.outcomes or not all(o["ok"] for o in self.outcomes)

    def describe(self) -> str:
        parts = []
        for item in self.items:
            extra = {k: v for k, v in item.items() if k != "kind"}
            parts.append(item["kind"] + ("" if not extra else json.dumps(extra)))
        return ("driver-on-node " if self.driver_on_node else "") + ", ".join(parts)


class _Driver:
    """A job's driver process, its stdout read line by line on a thread."""

    def __init__(self, spec: dict[str, Any], log: Path) -> None:
        self.lines: list[dict[str, Any]] = []
        self.log_path = log
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.scenarios.job", json.dumps(spec)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "RAY_DEDUP_LOGS": "0"},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def wait_lines(self, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while len(self.lines) < count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)
                return len(self.lines) >= count
            time.sleep(0.1)
        return True

    def why(self) -> str:
        """The exit code and the last line of the driver's stderr."""
        self._log.flush()
        tail = [line for line in self.log_path.read_text().splitlines() if line.strip()]
        return f"exit {self.process.poll()}: {(tail or [''])[-1][:300]}"

    def go(self) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write("go\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)

    def close(self) -> None:
        self.kill()
        self.process.wait(timeout=30)
        self._log.close()


@dataclass
class Round:
    jobs: list[Job]
    deaths: dict[str, Death]
    response: dict[str, Any]


def play(
    cluster: PreemptibleCluster,
    spare: Worker,
    plan: dict[str, list[Job]],
    *,
    number: int,
    gate_name: str,
    window_s: float,
    logs: Path,
) -> Round:
    """Play one round: `plan` maps each doomed worker's instance id to its jobs."""
    import ray

    gate = ray.get_actor(gate_name, namespace=NAMESPACE)
    drivers = _start_drivers(cluster, spare, plan, number, gate_name, logs)
    try:
        for job, driver in drivers:
            if driver.wait_lines(1, 240):
                job.job_id = driver.lines[0]["job_id"]
            else:
                job.setup_error = f"driver never got ready ({driver.why()})"
        time.sleep(1.5)  # task events reach the GCS about once a second
        # WHEN the warnings come, answered in one request
        termination_s = time.time() + window_s
        response = respond(
            cluster.address,
            *(warning(instance_id, termination_s) for instance_id in plan),
            request_id=f"bench-round-{number}",
        )
        _read_verdicts(response, [job for job, _ in drivers])
        # AND the workers (with the drivers on them) are killed at the termination time
        time.sleep(max(0.0, termination_s - time.time()))
        for job, driver in drivers:
            if job.driver_on_node:
                driver.kill()
        doomed = [cluster.workers[instance_id] for instance_id in plan]
        for worker in doomed:
            cluster.kill(worker)
        deaths = {worker.instance_id: death_of(worker.node_id) for worker in doomed}
        # THEN each job says what became of its work
        ray.get(gate.open_prefix.remote(f"r{number}-"))
        _collect(drivers)
    finally:
        for _, driver in drivers:
            driver.close()
    return Round([job for job, _ in drivers], deaths, response)


def _start_drivers(
    cluster: PreemptibleCluster,
    spare: Worker,
    plan: dict[str, list[Job]],
    number: int,
    gate_name: str,
    logs: Path,
) -> list[tuple[Job, _Driver]]:
    drivers: list[tuple[Job, _Driver]] = []
    for instance_id, jobs in plan.items():
        worker = cluster.workers[instance_id]
        for index, job in enumerate(jobs):
            job.instance_id = instance_id
            spec = {
                "address": cluster.address,
                "node_id": worker.node_id,
                "instance_id": worker.instance_id,
                "spare_node_id": spare.node_id,
                "spare_instance_id": spare.instance_id,
                "driver_temp_dir": worker.temp_dir if job.driver_on_node else None,
                "gate": gate_name,
                "namespace": NAMESPACE,
                "round": f"r{number}",
                "job": f"{instance_id[-4:]}j{index}",
                "items": job.items,
            }
            log = logs / f"r{number}-{instance_id}-j{index}.log"
            drivers.append((job, _Driver(spec, log)))
    return drivers


def _read_verdicts(response: dict[str, Any], jobs: list[Job]) -> None:
    verdicts = {
        impacted["job_id"]: impacted
        for result in results_by_instance(response).values()
        for impacted in result.get("impacted_jobs", [])
    }
    for job in jobs:
        judged = verdicts.get(job.job_id)
        job.verdict = "not-listed" if judged is None else str(judged.get("verdict", "none"))
        job.reasons = [] if judged is None else list(judged.get("reasons", []))


def _collect(drivers: list[tuple[Job, _Driver]]) -> None:
    for _, driver in drivers:
        driver.go()
    for job, driver in drivers:
        if job.driver_on_node or job.setup_error:
            continue
        if driver.wait_lines(2, 150):
            job.outcomes = list(driver.lines[1]["items"])
        else:
            job.setup_error = f"driver gave no outcome ({driver.why()})"


def start_gate(head_node_id: str, name: str) -> Any:
    """The gate the jobs' tasks wait on, a named actor on the head (which is never killed)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from tests.scenarios.workload import Gate

    return (
        ray.remote(Gate)
        .options(
            name=name,
            namespace=NAMESPACE,
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(head_node_id, soft=False),
        )
        .remote()
    )
