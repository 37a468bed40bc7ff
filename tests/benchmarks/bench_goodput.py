"""Goodput through a stream of spot interruptions: Ray alone, `ray drain-node`, the responder.

    make bench-goodput   # .venv/bin/python -m tests.benchmarks.bench_goodput [--seed N]

The seed's job (``004``: 1-CPU tasks of 120 s, as long as the 2-minute notice window) on the
seed's cluster shape (x86 and Graviton spot workers, on-demand head without CPUs), on one
machine: the real autoscaler v2 with the fake provider (``tests/capacity_provider.py``), the
node types of the bundle rendered for two subnets (four spot pools, two on-demand twins, the
bundle's priorities), 2 logical CPUs per worker, at most 4 workers (the cap leaves room for a
replacement beside a draining node, which v2 does not count). Time is scaled by one factor:
the window and the tasks shrink together (120 s -> 120/F s), and so do the trace's times.

The interruption trace (``spot_market.py``, seeded, parameters in the results) names a pool
and a time; the node of that pool alive then gets the warning, and it is SIGKILLed with its
workers at the warning's termination time, as EC2 takes it. A pool the trace leaves without
capacity refuses launches for a while (the provider raises ``InsufficientInstanceCapacity``).

Four runs, each on a fresh cluster, the same job and trace:

- ``uninterrupted``: no trace; the makespan every other run is measured against;
- ``ray-alone``: nothing acts on the warnings; the autoscaler replaces what died;
- ``drain-node``: on each warning, ``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION
  --deadline-remaining-seconds <to the termination>`` on the head (the hidden CLI a user
  could script);
- ``responder``: each warning is replayed through the real handler
  (``spot-responder replay --keep-time``: drain, impact, replacement request) and the
  ``terminated`` state change after the kill releases the request, as EC2 sends it.

Every task attempt records its node, start and end from inside the task; the nodes, their
drains and their deaths come from the GCS (Ray's own death reason for every killed node).
Results: tests/benchmarks/results/goodput.{md,json,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spot_responder.cli.autoscaled import FAST_HEALTH_CHECKS
from tests.autoscaler_cluster import (
    SPOT_NOTICE_WINDOW_S,
    FakeAutoscalingCluster,
    WorkerType,
    fake_autoscaling_cluster,
    replay_events,
)
from tests.benchmarks import recorded_job
from tests.benchmarks.report import (
    ROOT,
    machine,
    machine_line,
    median,
    publish,
    pyplot,
    replot_option,
    saved,
    table,
)
from tests.benchmarks.spot_market import Interruption, MarketParameters, generate
from tests.capacity_provider import INSTANCE_ID_LABEL
from tests.support import load_event

NAME = "goodput"
SPOT_POOLS = ("x86_spot_worker", "x86_spot_worker_2", "arm_spot_worker", "arm_spot_worker_2")
ON_DEMAND = ("x86_ondemand_worker", "arm_ondemand_worker")
CPUS_PER_WORKER = 2
CLUSTER_MAX_WORKERS = 4
TARGET_CPUS = CLUSTER_MAX_WORKERS * CPUS_PER_WORKER
SPOT_PRIORITY, ON_DEMAND_PRIORITY = 20, 10  # ray_hooks/bundle/render.py
WORKER_TYPES = tuple(
    WorkerType(
        name,
        market,
        "arm64" if name.startswith("arm") else "x86_64",
        cpus=CPUS_PER_WORKER,
        max_workers=2,
        priority=priority,
    )
    for names, market, priority in (
        (SPOT_POOLS, "spot", SPOT_PRIORITY),
        (ON_DEMAND, "on-demand", ON_DEMAND_PRIORITY),
    )
    for name in names
)
PROVIDER_CLASS = "tests.capacity_provider.CapacityLimitedProvider"
MODES = ("uninterrupted", "ray-alone", "drain-node", "responder")
TITLES = {
    "uninterrupted": "no interruptions",
    "ray-alone": "Ray alone",
    "drain-node": "Ray + ray drain-node",
    "responder": "with the responder",
}
TIME_FACTOR = 4.0  # 120 s -> 30 s
TASKS = 48  # 6 waves on 8 CPUs (the seed: 512 tasks, 32 waves on its 16 CPUs)
SAFETY_MARGIN_S = 5  # real seconds, like the deployed default's share of the window
JUST_INTERRUPTED_S = 180.0  # real: "a pool interrupted in the last 3 minutes"
JOB_TIMEOUT_S = 900
JOIN_TIMEOUT_S = 120
#: Illustrative prices per node-hour (USD): us-east-1 on-demand list prices of the seed's
#: instance types (m7i.2xlarge, m8g.2xlarge); spot at 35 % of on-demand, a typical discount.
#: The benchmark states them; check your own region's.
ON_DEMAND_PRICE = {"x86_64": 0.4032, "arm64": 0.3590}
SPOT_SHARE = 0.35


def price_per_hour(node_type: str) -> float:
    arch = "arm64" if node_type.startswith("arm") else "x86_64"
    on_demand = ON_DEMAND_PRICE[arch]
    return on_demand * SPOT_SHARE if node_type in SPOT_POOLS else on_demand


# ---------------------------------------------------------------- the job (a driver process)


# ---------------------------------------------------------------- one run


class _Run:
    """One mode on a fresh cluster: the job, the trace acted out, the samples."""

    def __init__(
        self,
        mode: str,
        cluster: FakeAutoscalingCluster,
        trace: list[Interruption],
        capacity_file: Path,
        tmp: Path,
        factor: float,
        seed: int,
        log: Any,
    ) -> None:
        self.mode, self.cluster, self.trace = mode, cluster, trace
        self.capacity_file, self.tmp, self.factor, self.log = capacity_file, tmp, factor, log
        self.window_s = SPOT_NOTICE_WINDOW_S / factor
        self.rng = random.Random(seed)  # which node of a pool a warning hits
        self.notices: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.threads: list[threading.Thread] = []
        self.warned: set[str] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.unavailable: dict[str, list[list[float]]] = {}

    # -- the whole run ---------------------------------------------------------
    def go(self) -> dict[str, Any]:
        head = self._bring_up()
        sampler = threading.Thread(target=self._sample, daemon=True)
        sampler.start()
        tasks = [{"index": i, "seconds": self.window_s, "strict": False} for i in range(TASKS)]
        driver, out_path = recorded_job.start(self.cluster.gcs_address, head, tasks, self.tmp)
        output: list[str] = []
        try:
            t0 = recorded_job.wait_for_submitted(driver, output)
            self.log(f"{self.mode}: job submitted ({TASKS} tasks of {self.window_s:.0f} s)")
            if self.mode != "uninterrupted":
                self._act_out(t0, driver)
            driver.wait(timeout=JOB_TIMEOUT_S)
        finally:
            self.stopping.set()
            if driver.poll() is None:
                driver.kill()
                driver.wait(timeout=10)
            for thread in self.threads:
                thread.join(timeout=120)
            sampler.join(timeout=15)
        if not out_path.exists():
            raise RuntimeError("the job wrote no result:\n" + "".join(output[-40:]))
        job = json.loads(out_path.read_text())
        self.log(f"{self.mode}: job done in {job['finished'] - job['t0']:.1f} s")
        return {
            "mode": self.mode,
            "t0": job["t0"],
            "job": job,
            "notices": self.notices,
            "samples": self.samples,
            "nodes": _node_table(self.cluster),
            "unavailable": self.unavailable,
        }

    def _bring_up(self) -> str:
        """One busy-to-be worker per spot pool, asked for by marker; then the request is
        cleared, so only the job's demand (and the responder) asks for capacity."""
        from ray.autoscaler.v2.sdk import request_cluster_resources

        bundles = [
            {"resources": {"CPU": 1.0, pool: 1.0}, "label_selector": {}} for pool in SPOT_POOLS
        ]
        request_cluster_resources(self.cluster.gcs_address, bundles)

        def up() -> bool:
            return set(SPOT_POOLS) <= {n.node_type for n in self.cluster.alive_workers()}

        self.cluster.wait_for(up, JOIN_TIMEOUT_S, f"a worker in each of {SPOT_POOLS}")
        request_cluster_resources(self.cluster.gcs_address, [])
        (head,) = [n.node_id for n in self.cluster.nodes() if n.is_head and n.alive]
        return head

    # -- the trace -------------------------------------------------------------
    def _act_out(self, t0: float, driver: subprocess.Popen[str]) -> None:
        for interruption in self.trace:
            _sleep_until(t0 + interruption.at_s)
            if driver.poll() is not None:
                self.log(f"{self.mode}: the job ended before the rest of the trace")
                return
            self._interrupt(interruption, t0)

    def _interrupt(self, interruption: Interruption, t0: float) -> None:
        now = time.time()
        if interruption.unavailable_s > 0:
            windows = self.unavailable.setdefault(interruption.pool, [])
            windows.append([now, now + interruption.unavailable_s])
            self.capacity_file.write_text(json.dumps(self.unavailable))
        alive = [
            n
            for n in self.cluster.alive_workers()
            if n.node_type == interruption.pool and n.node_id not in self.warned
        ]
        notice: dict[str, Any] = {
            "at": now,
            "at_s": round(now - t0, 2),
            "pool": interruption.pool,
            "in_burst": interruption.in_burst,
            "pool_out_of_capacity_s": interruption.unavailable_s,
        }
        if not alive:
            notice["victim"] = None
            self.log(f"{self.mode}: t+{now - t0:.0f} s {interruption.pool}: no node to warn")
            with self.lock:
                self.notices.append(notice)
            return
        victim = self.rng.choice(sorted(alive, key=lambda n: n.node_id))
        self.warned.add(victim.node_id)
        termination = float(int(now) + round(self.window_s))
        notice.update(
            victim=victim.node_id,
            instance_id=victim.labels.get(INSTANCE_ID_LABEL),
            termination=termination,
        )
        with self.lock:
            self.notices.append(notice)
        thread = threading.Thread(target=self._notice, args=(notice, t0), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _notice(self, notice: dict[str, Any], t0: float) -> None:
        started = time.time()
        try:
            if self.mode == "drain-node":
                notice["action"] = self._drain_node(notice)
            elif self.mode == "responder":
                notice["action"] = self._replay_warning(notice)
            else:
                notice["action"] = "none"
        except Exception as exc:  # reported, and the kill still comes
            notice["action"] = f"error: {exc!r}"[:300]
        notice["reaction_s"] = round(time.time() - started, 2)
        _sleep_until(notice["termination"])
        notice["killed_at"] = time.time()
        notice["raylet_at_kill"] = (
            "gone already" if self.cluster.kill_node(notice["victim"]) is None else "SIGKILLed"
        )
        self.log(
            f"{self.mode}: t+{notice['at_s']:.0f} s {notice['pool']} {notice['victim'][-5:]}: "
            f"{notice['action']} in {notice['reaction_s']:.1f} s; killed at "
            f"t+{notice['killed_at'] - t0:.0f} s ({notice['raylet_at_kill']})"
        )
        if self.mode == "responder":
            time.sleep(2.0 / self.factor * 4)  # EC2's `terminated` change follows the end
            with contextlib.suppress(Exception):
                notice["released"] = self._replay_terminated(notice)

    def _drain_node(self, notice: dict[str, Any]) -> str:
        remaining = max(1, int(notice["termination"] - time.time()))
        done = subprocess.run(
            [
                str(Path(sys.executable).with_name("ray")),
                "drain-node",
                f"--address={self.cluster.gcs_address}",
                f"--node-id={notice['victim']}",
                "--reason=DRAIN_NODE_REASON_PREEMPTION",
                "--reason-message=spot interruption warning",
                f"--deadline-remaining-seconds={remaining}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return "drained" if done.returncode == 0 else f"drain-node failed: {done.stderr[-200:]}"

    def _replay_warning(self, notice: dict[str, Any]) -> str:
        event = load_event("spot-interruption-terminate.json")
        sent = datetime.fromtimestamp(notice["termination"] - SPOT_NOTICE_WINDOW_S, tz=UTC)
        event["time"] = sent.strftime("%Y-%m-%dT%H:%M:%SZ")
        margin = max(1, round(SAFETY_MARGIN_S / self.factor))
        answer = self._replay(event, f"goodput-{notice['instance_id']}", notice, margin)
        replacement = answer.get("replacement") or {}
        notice["asked"] = replacement.get("node_type")
        notice["asked_status"] = replacement.get("status")
        notice["asked_reason"] = replacement.get("reason")
        return str(answer.get("action"))

    def _replay_terminated(self, notice: dict[str, Any]) -> str:
        event = load_event("state-change-terminated.json")
        answer = self._replay(event, f"goodput-gone-{notice['instance_id']}", notice, None)
        return str(answer.get("action"))

    def _replay(
        self, event: dict[str, Any], event_id: str, notice: dict[str, Any], margin: int | None
    ) -> dict[str, Any]:
        """The event, for the notice's instance, through the handler's code (its own ledger);
        a `margin` keeps the event's time (the warning), None moves it to now."""
        event["id"] = event_id
        event["detail"]["instance-id"] = notice["instance_id"]
        event["resources"] = [
            f"arn:aws:ec2:us-west-2:123456789012:instance/{notice['instance_id']}"
        ]
        workdir = self.tmp / event_id
        workdir.mkdir()
        extra = {} if margin is None else {"safety_margin_s": margin}
        (answer,) = replay_events(
            self.cluster,
            workdir,
            workdir / "ledger.sqlite3",
            [event],
            keep_time=margin is not None,
            **extra,
        )
        return dict(answer)

    # -- samples ---------------------------------------------------------------
    def _sample(self) -> None:
        from ray_hooks.cluster import connect

        gcs = connect(self.cluster.gcs_address)
        while not self.stopping.is_set():
            with contextlib.suppress(Exception):
                draining = set(gcs.get_draining_nodes())
                alive = self.cluster.alive_workers()
                self.samples.append(
                    {
                        "at": time.time(),
                        "nodes": [[n.node_id, n.node_type, n.node_id in draining] for n in alive],
                    }
                )
            self.stopping.wait(0.5)


def _node_table(cluster: FakeAutoscalingCluster) -> dict[str, dict[str, Any]]:
    """Every worker the GCS knew, with Ray's own death reason for the dead."""
    from ray._raylet import GcsClient
    from ray.core.generated import common_pb2

    client = GcsClient(address=cluster.gcs_address)
    table_: dict[str, dict[str, Any]] = {}
    for node_id, info in client.get_all_node_info(timeout=10).items():
        if info.is_head_node:
            continue
        dead = info.state != 0
        table_[node_id.hex()] = {
            "type": info.node_type_name,
            "start": info.start_time_ms / 1000,
            "end": info.end_time_ms / 1000 if dead else None,
            "death_reason": (
                common_pb2.NodeDeathInfo.Reason.Name(info.death_info.reason) if dead else None
            ),
            "instance_id": dict(info.labels).get(INSTANCE_ID_LABEL),
        }
    return table_


def run(mode: str, trace: list[Interruption], factor: float, seed: int, log: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rsr-gp-") as tmp:
        capacity_file = Path(tmp) / "capacity.json"
        capacity_file.write_text("{}")
        with fake_autoscaling_cluster(
            worker_types=WORKER_TYPES,
            max_workers=CLUSTER_MAX_WORKERS,
            idle_timeout_minutes=1.0,
            include_dashboard=True,  # the responder's impact analysis reads the state API
            extra_env={**FAST_HEALTH_CHECKS, "PYTHONPATH": str(ROOT)},
            provider_class=PROVIDER_CLASS,
            provider_extra={"capacity_file": str(capacity_file)},
        ) as cluster:
            result = _Run(mode, cluster, trace, capacity_file, Path(tmp), factor, seed, log).go()
            time.sleep(3)  # the GCS books the last deaths (health checks are shortened)
            result["nodes"] = _node_table(cluster)
            result["monitor_log_tail"] = cluster.monitor_log(3000)
            return result


def _sleep_until(at: float) -> None:
    time.sleep(max(0.0, at - time.time()))


# ---------------------------------------------------------------- figures


def summarize(
    result: dict[str, Any], baseline_makespan: float | None, factor: float
) -> dict[str, Any]:
    job, nodes = result["job"], result["nodes"]
    t0, finished = job["t0"], job["finished"]
    ended = {(i, node, round(started, 6)) for i, node, started, _ in job["ends"]}
    death = {n["victim"]: n["killed_at"] for n in result["notices"] if n.get("killed_at")}
    killed = [a for a in job["starts"] if (a[0], a[1], round(a[2], 6)) not in ended]
    killed_task_s = sum(max(0.0, death.get(node, finished) - start) for _, node, start in killed)
    charged = [
        a for a in killed if nodes.get(a[1], {}).get("death_reason") != "AUTOSCALER_DRAIN_PREEMPTED"
    ]
    warned = [n for n in result["notices"] if n.get("victim")]
    reasons = [nodes.get(n["victim"], {}).get("death_reason") for n in warned]
    makespan = finished - t0
    initial = {nid for nid, n in nodes.items() if n["start"] < t0}
    joined = sorted(
        ((n["start"], nid, n["type"]) for nid, n in nodes.items() if nid not in initial),
    )
    leads = _leads(warned, joined)
    just = JUST_INTERRUPTED_S / factor
    in_hit_pool = [
        (start, node_type)
        for start, _, node_type in joined
        if any(w["pool"] == node_type and 0 <= start - w["at"] <= just for w in result["notices"])
    ]
    failed = [r for r in job["results"].values() if not r["ok"]]
    return {
        "makespan_s": round(makespan, 1),
        "makespan_ratio": round(makespan / baseline_makespan, 3) if baseline_makespan else 1.0,
        "tasks_failed": len(failed),
        "attempts_killed": len(killed),
        "task_seconds_killed": round(killed_task_s, 1),
        "retries_charged": len(charged),
        "notices": len(result["notices"]),
        "warned": len(warned),
        "deaths_preempted": sum(r == "AUTOSCALER_DRAIN_PREEMPTED" for r in reasons),
        "death_reasons": reasons,
        "leads_s": leads,
        "joined_before_kill": sum(lead is not None and lead > 0 for lead in leads),
        "replacements": [t for _, _, t in joined],
        "replacements_in_just_interrupted_pool": len(in_hit_pool),
        "deficit_cpu_s": round(_deficit(result["samples"], t0, finished), 1),
        "cost_usd_real": round(_cost(nodes, t0, finished, factor), 3),
        "on_demand_node_s": round(_node_seconds(nodes, t0, finished, ON_DEMAND), 1),
        "reaction_s": [n.get("reaction_s") for n in warned],
    }


def _leads(
    warned: list[dict[str, Any]], joined: list[tuple[float, str, str]]
) -> list[float | None]:
    """Per warned node: the first node that joined after its warning and was not taken by an
    earlier warning, its join time minus the victim's kill (positive: in time)."""
    taken: set[str] = set()
    leads: list[float | None] = []
    for notice in sorted(warned, key=lambda n: n["at"]):
        fresh = [
            (start, nid) for start, nid, _ in joined if start >= notice["at"] and nid not in taken
        ]
        if not fresh or not notice.get("killed_at"):
            leads.append(None)
            continue
        start, nid = fresh[0]
        taken.add(nid)
        leads.append(round(notice["killed_at"] - start, 1))
    return leads


def _deficit(samples: list[dict[str, Any]], t0: float, finished: float) -> float:
    """CPU-seconds the job went short of its 8 CPUs: alive, not draining workers, sampled."""
    total, previous = 0.0, None
    for sample in samples:
        at = sample["at"]
        if at < t0 or at > finished:
            continue
        schedulable = CPUS_PER_WORKER * sum(1 for _, _, draining in sample["nodes"] if not draining)
        if previous is not None:
            total += max(0, TARGET_CPUS - previous[1]) * (at - previous[0])
        previous = (at, schedulable)
    return total


def _spans(nodes: dict[str, dict[str, Any]], t0: float, finished: float):  # type: ignore[no-untyped-def]
    for node in nodes.values():
        start = max(node["start"], t0)
        end = min(node["end"] or finished, finished)
        if end > start:
            yield node["type"], end - start


def _node_seconds(
    nodes: dict[str, dict[str, Any]], t0: float, finished: float, types: tuple[str, ...]
) -> float:
    return sum(seconds for node_type, seconds in _spans(nodes, t0, finished) if node_type in types)


def _cost(nodes: dict[str, dict[str, Any]], t0: float, finished: float, factor: float) -> float:
    """USD for the job's node-hours, in real time (scaled seconds times the factor)."""
    return sum(
        price_per_hour(node_type) * seconds * factor / 3600
        for node_type, seconds in _spans(nodes, t0, finished)
    )


# ---------------------------------------------------------------- report


def _against_ray_alone(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Ray alone's summary, the responder's, and the responder's task-seconds killed as a
    share of Ray alone's."""
    alone, responder = data["summaries"]["ray-alone"], data["summaries"]["responder"]
    killed = alone["task_seconds_killed"]
    return alone, responder, responder["task_seconds_killed"] / killed if killed else 0.0


def headline(data: dict[str, Any]) -> str:
    alone, responder, share = _against_ray_alone(data)
    leads = [x for x in responder["leads_s"] if x is not None]
    return (
        f"Through {responder['warned']} spot warnings of one seeded trace, Ray alone lost "
        f"{alone['task_seconds_killed']:.0f} task-seconds ({alone['retries_charged']} retries "
        f"charged) and took {alone['makespan_ratio']:.2f}x the uninterrupted makespan; with the "
        f"responder {responder['task_seconds_killed']:.0f} ({share:.0%} of Ray alone's), "
        f"{responder['retries_charged']} retries charged, {responder['makespan_ratio']:.2f}x, "
        f"a replacement in before the kill for {responder['joined_before_kill']} of "
        f"{responder['warned']} (median lead {median(leads):.1f} s scaled)."
    )


def targets(data: dict[str, Any]) -> list[str]:
    """The targets for the responder against Ray alone, each met or missed by how much."""
    _, responder, share = _against_ray_alone(data)
    in_time = responder["joined_before_kill"] / responder["warned"] if responder["warned"] else 1.0
    rows = [
        ("task-seconds killed <= 5 % of Ray alone's", share <= 0.05, f"{share:.1%}"),
        (
            "no retries consumed by preemptions",
            responder["retries_charged"] == 0,
            str(responder["retries_charged"]),
        ),
        (
            "makespan <= 1.10 x uninterrupted",
            responder["makespan_ratio"] <= 1.10,
            f"{responder['makespan_ratio']:.2f} x",
        ),
        (
            "replacement joined before the kill for >= 95 % of warnings",
            in_time >= 0.95,
            f"{in_time:.0%}",
        ),
        (
            "no replacement in a pool interrupted in the last 3 min",
            responder["replacements_in_just_interrupted_pool"] == 0,
            str(responder["replacements_in_just_interrupted_pool"]),
        ),
    ]
    return [f"- {'met' if ok else 'MISSED'}: {what} (measured {value})" for what, ok, value in rows]


def render(data: dict[str, Any]) -> str:
    settings, s = data["settings"], data["summaries"]
    factor = settings["time_factor"]

    def leads(summary: dict[str, Any]) -> str:
        values = [x for x in summary["leads_s"] if x is not None]
        missing = len(summary["leads_s"]) - len(values)
        text = ", ".join(f"{x:+.0f}" for x in values) or "-"
        return text + (f" ({missing} none)" if missing else "")

    rows = []
    for mode in MODES:
        x = s[mode]
        rows.append(
            [
                TITLES[mode],
                f"{x['makespan_s']:.0f} s ({x['makespan_ratio']:.2f} x)",
                f"{x['task_seconds_killed']:.0f} ({x['attempts_killed']} attempts)",
                x["retries_charged"],
                f"{x['deaths_preempted']}/{x['warned']}",
                leads(x) if mode != "uninterrupted" else "-",
                f"{x['joined_before_kill']}/{x['warned']}",
                f"{x['deficit_cpu_s']:.0f}",
                f"{x['replacements_in_just_interrupted_pool']}/{len(x['replacements'])}",
                f"${x['cost_usd_real']:.2f}"
                f" ({x['on_demand_node_s'] * factor / 3600:.2f} h on demand)",
                x["tasks_failed"],
            ]
        )
    headers = [
        "run",
        "makespan",
        "task-s killed",
        "retries charged",
        "deaths Ray booked as preemption",
        "replacement lead per warning (s, scaled)",
        "in before the kill",
        "CPU-s deficit",
        "replacements in a just-hit pool",
        "cost (real-time node-hours)",
        "tasks failed",
    ]
    trace_rows = [
        [
            f"{n['at_s']:.0f}",
            n["pool"],
            "yes" if n["in_burst"] else "",
            f"{n['pool_out_of_capacity_s']:.0f}" if n["pool_out_of_capacity_s"] else "",
        ]
        for n in data["runs"]["responder"]["notices"]
    ]
    params = settings["market"]
    lines = [
        "# Goodput through a stream of spot interruptions (make bench-goodput)",
        "",
        machine_line(data["machine"]),
        "",
        headline(data),
        "",
        table(headers, rows),
        "",
        "## Against the targets (responder vs Ray alone, same trace)",
        "",
        *targets(data),
        "",
        "## Settings",
        "",
        f"- Time factor {factor:g}: the 120 s notice window and the 120 s tasks are "
        f"{120 / factor:g} s; the trace's times are divided by it; costs multiply back.",
        f"- Job: {settings['tasks']} one-CPU tasks (Ray's default retries) on "
        f"{CLUSTER_MAX_WORKERS} workers of {CPUS_PER_WORKER} logical CPUs, one per spot pool at "
        "the start; cluster max_workers "
        f"{CLUSTER_MAX_WORKERS}, 2 per type; autoscaler v2, the fake provider.",
        f"- Trace: seed {settings['seed']}; {params['rate_per_pool_per_hour']:g} interruptions "
        f"per pool per hour (a stress rate: published r5 traces show 4-20 per pool per day), "
        f"burst probability {params['burst_probability']:g} with gaps of "
        f"{params['burst_gap_s'][0]:g}-{params['burst_gap_s'][1]:g} s, "
        f"{params['unavailable_probability']:.0%} of interruptions leave the pool without "
        f"capacity for {params['unavailable_s']:g} s; between {params['start_s']:g} s and "
        f"{params['end_s']:g} s of the job (real seconds).",
        f"- Prices per node-hour: on-demand x86 ${ON_DEMAND_PRICE['x86_64']}, arm "
        f"${ON_DEMAND_PRICE['arm64']} (us-east-1 list, m7i/m8g.2xlarge); spot at "
        f"{SPOT_SHARE:.0%} of on-demand (an assumption, not a quote).",
        "- Lead: the first node that joined after a warning (and no earlier warning's), its "
        "join time minus the victim's kill; negative: it came after the node died.",
        "- Deficit: CPU-seconds below 8 schedulable CPUs (alive, not draining) while the job ran.",
        "- Retries charged: killed attempts on a node Ray did not book as "
        "AUTOSCALER_DRAIN_PREEMPTED (Ray retries the others for free).",
        "",
        "## The trace as it came",
        "",
        table(
            ["t (s, scaled)", "pool", "in a burst", "pool out of capacity (s, scaled)"], trace_rows
        ),
    ]
    return "\n".join(lines)


def _running(job: dict[str, Any], deaths: dict[str, float]) -> tuple[list[float], list[int]]:
    ends = {(i, node, round(started, 6)): at for i, node, started, at in job["ends"]}
    changes: list[tuple[float, int]] = []
    for index, node, start in job["starts"]:
        end = ends.get((index, node, round(start, 6)), deaths.get(node, job["finished"]))
        changes += [(start - job["t0"], 1), (end - job["t0"], -1)]
    xs, ys, level = [0.0], [0], 0
    for at, step in sorted(changes):
        level += step
        xs.append(at)
        ys.append(level)
    return xs, ys


def plot(data: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    pools = [*SPOT_POOLS, *ON_DEMAND]
    colors = ["#1f77b4", "#aec7e8", "#2ca02c", "#98df8a", "#d62728", "#ff9896"]
    fig, axes = plt.subplots(len(MODES), 1, figsize=(11, 2.6 * len(MODES)), sharex=True)
    for ax, mode in zip(axes, MODES, strict=True):
        result = data["runs"][mode]
        t0 = result["t0"]
        times = [sample["at"] - t0 for sample in result["samples"]]
        stacks = [
            [
                sum(1 for _, t, _ in sample["nodes"] if t == pool) * CPUS_PER_WORKER
                for sample in result["samples"]
            ]
            for pool in pools
        ]
        ax.stackplot(times, stacks, labels=pools, colors=colors, step="post", alpha=0.8)
        deaths = {n["victim"]: n["killed_at"] for n in result["notices"] if n.get("killed_at")}
        xs, ys = _running(result["job"], deaths)
        ax.step(xs, ys, where="post", color="black", linewidth=1.2, label="running tasks")
        for notice in result["notices"]:
            if notice.get("victim"):
                ax.axvline(notice["at"] - t0, color="orange", linestyle="--", linewidth=0.8)
                if notice.get("killed_at"):
                    ax.axvline(notice["killed_at"] - t0, color="red", linewidth=0.8)
        summary = data["summaries"][mode]
        ax.set_title(
            f"{TITLES[mode]}: makespan {summary['makespan_s']:.0f} s, "
            f"{summary['task_seconds_killed']:.0f} task-s killed",
            fontsize=10,
        )
        ax.set_ylabel("CPUs / tasks")
        ax.set_ylim(0, TARGET_CPUS + 3)
    axes[0].legend(loc="upper right", fontsize=7, ncol=4)
    axes[-1].set_xlabel("seconds since the job started (scaled; dashed: warning, red: kill)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="the interruption trace (1)")
    parser.add_argument("--factor", type=float, default=TIME_FACTOR, help="time factor (4)")
    parser.add_argument("--modes", default=",".join(MODES), help="which runs (all four)")
    replot_option(parser, NAME)
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    if args.replot:
        data = saved(NAME)
    else:
        market = MarketParameters(pools=SPOT_POOLS)
        trace = [i.scaled(args.factor) for i in generate(market, args.seed)]
        log(f"trace seed {args.seed}: {len(trace)} interruptions, time factor {args.factor:g}")
        for item in trace:
            log(f"  t+{item.at_s:.0f} s {item.pool}" + (" (burst)" if item.in_burst else ""))
        info = machine()
        runs = {}
        for mode in args.modes.split(","):
            log(f"--- {TITLES[mode]}")
            runs[mode] = run(
                mode, [] if mode == "uninterrupted" else trace, args.factor, args.seed, log
            )
        data = {
            "benchmark": NAME,
            "machine": info,
            "settings": {
                "time_factor": args.factor,
                "tasks": TASKS,
                "task_s": SPOT_NOTICE_WINDOW_S / args.factor,
                "seed": args.seed,
                "market": market.to_json(),
                "trace": [i.to_json() for i in trace],
                "safety_margin_s": SAFETY_MARGIN_S,
                "prices": {"on_demand": ON_DEMAND_PRICE, "spot_share": SPOT_SHARE},
            },
            "runs": runs,
        }
    baseline = data["runs"].get("uninterrupted")
    base = baseline["job"]["finished"] - baseline["job"]["t0"] if baseline else None
    factor = data["settings"]["time_factor"]
    data["summaries"] = {
        mode: summarize(result, base, factor) for mode, result in data["runs"].items()
    }
    print()
    if set(MODES) <= set(data["runs"]):
        publish(NAME, data, render(data), plot)
    else:
        print(json.dumps(data["summaries"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
