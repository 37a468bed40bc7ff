"""The job both work benchmarks run: a driver process that records every task attempt.

Each task records its node, start and end from inside itself to an actor on the head (which
no interruption kills), so killed attempts show as starts without an end. The plan is a JSON
list of tasks `{"index", "seconds", "strict"}`; `strict` tasks have `max_retries=0`, the
others Ray's default 3. The driver prints `SUBMITTED <t0>` and writes the record (t0,
finished, results per task, starts, ends) to its output file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

DRIVER = textwrap.dedent(
    """
    import json, sys, time
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    address, head_id, plan_path, out_path = sys.argv[1:5]
    plan = json.loads(open(plan_path).read())
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")

    @ray.remote(num_cpus=0)
    class Recorder:
        def __init__(self):
            self.starts, self.ends = [], []

        def started(self, index, node, at):
            self.starts.append([index, node, at])

        def ended(self, index, node, started, at):
            self.ends.append([index, node, started, at])

        def dump(self):
            return {"starts": self.starts, "ends": self.ends}

    on_head = NodeAffinitySchedulingStrategy(head_id, soft=False)
    recorder = Recorder.options(scheduling_strategy=on_head).remote()
    ray.get(recorder.dump.remote())

    @ray.remote(num_cpus=1)
    def work(index, seconds, recorder):
        node = ray.get_runtime_context().get_node_id()
        started = time.time()
        recorder.started.remote(index, node, started)
        time.sleep(seconds)
        ray.get(recorder.ended.remote(index, node, started, time.time()))
        return index

    t0 = time.time()
    refs = {
        work.options(max_retries=0 if task["strict"] else 3).remote(
            task["index"], task["seconds"], recorder
        ): task["index"]
        for task in plan
    }
    print("SUBMITTED", t0, flush=True)
    results = {}
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        for ref in done:
            index = refs.pop(ref)
            try:
                ray.get(ref)
                results[index] = {"ok": True, "at": time.time()}
            except Exception as exc:
                results[index] = {"ok": False, "error": type(exc).__name__, "at": time.time()}
    finished = time.time()
    record = {"t0": t0, "finished": finished, "results": results}
    record.update(ray.get(recorder.dump.remote()))
    with open(out_path, "w") as out:
        json.dump(record, out)
    ray.shutdown()
    """
)


def start(
    gcs_address: str, head_id: str, tasks: list[dict[str, Any]], workdir: Path
) -> tuple[subprocess.Popen[str], Path]:
    """The driver started in a subprocess; returns it and the path its record goes to."""
    plan_path, out_path = workdir / "plan.json", workdir / "job.json"
    plan_path.write_text(json.dumps(tasks))
    script = workdir / "driver.py"
    script.write_text(DRIVER)
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    driver = subprocess.Popen(
        [sys.executable, str(script), gcs_address, head_id, str(plan_path), str(out_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    return driver, out_path


def wait_for_submitted(driver: subprocess.Popen[str], output: list[str]) -> float:
    """The job's t0, once the driver has submitted its tasks; its output goes on into `output`."""
    assert driver.stdout is not None
    for line in driver.stdout:
        output.append(line)
        if line.startswith("SUBMITTED "):
            threading.Thread(target=_collect, args=(driver, output), daemon=True).start()
            return float(line.split()[1])
    raise RuntimeError("the job ended before it submitted its tasks:\n" + "".join(output[-40:]))


def _collect(driver: subprocess.Popen[str], output: list[str]) -> None:
    assert driver.stdout is not None
    output.extend(driver.stdout)
