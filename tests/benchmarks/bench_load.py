"""Load: 128 spot warnings for three real Ray clusters within one second.

    make bench-load         # .venv/bin/python -m tests.benchmarks.bench_load

Three embedded Ray clusters (head + 2 labelled spot workers each; `--workers` 1 to 3)
stand for three `ray up` clusters. 128 interruption warnings arrive within one second:
one for each of the six workers, the other 122 for instances spread over the three
clusters that no Ray node carries (their head answers "node-not-found").

The queue is modelled on template.yaml: batches of BatchSize records; a full batch goes
out when its last record arrives, the last (partial) batch when MaximumBatchingWindow-
InSeconds has passed since its first record. Each batch is one Lambda invocation of the
real handler (`respond`), in its own process (forked before any Ray process starts, so no
cold start is counted), with a directory that maps every instance id to its cluster and
a channel that sends each cluster's request to that cluster's head as the local channel
does (`python -m ray_hooks respond`). Failed records are delivered again after the retry
delay, as SqsRetryDelay does.

Measured: head-node commands per batch and cluster (the target is one), seconds from the
first warning to every existing worker draining as Ray's GCS reports it, and whether all
128 notices are in the ledger. Written to tests/benchmarks/results/load.{json,md}. Nothing
is asserted; the figures are printed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.benchmarks.report import (
    machine,
    machine_line,
    publish,
    pyplot,
    quiet_stdio,
    replot_option,
    saved,
    table,
)

WARNINGS = 128
TARGET_DRAIN_S = 5.0
CLUSTERS = ("load-a", "load-b", "load-c")


# ---------------------------------------------------------------- the Lambda side (workers)


class ClusterRouter:
    """A ClusterChannel that sends each cluster's request to that cluster's own head node."""

    def __init__(self, addresses: dict[str, str], timeout_s: float) -> None:
        from spot_responder.adapters.channel_local import LocalClusterChannel

        self.channels = {
            name: LocalClusterChannel(address, timeout_s=timeout_s)
            for name, address in addresses.items()
        }
        self.sent: Counter[str] = Counter()
        self.request_sizes: dict[str, list[int]] = {}
        self.command_times: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()

    def _channel(self, cluster: str) -> Any:
        from spot_responder.channel import ChannelUnavailable

        if cluster not in self.channels:
            raise ChannelUnavailable(f"no head node known for cluster {cluster!r}")
        return self.channels[cluster]

    def send(self, cluster: str, request: dict[str, Any]) -> Any:
        with self._lock:
            self.sent[cluster] += 1
            self.request_sizes.setdefault(cluster, []).append(len(request["notices"]))
        started = time.time()
        try:
            return self._channel(cluster).send(cluster, request)
        finally:
            with self._lock:
                self.command_times.append((cluster, started, time.time()))

    def call(self, cluster: str, request: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self._channel(cluster).call(cluster, request)
        return answer


class ClusterMap:
    """An InstanceDirectory: every instance id of the burst, as EC2 tags would place it."""

    def __init__(self, clusters_by_instance: dict[str, str]) -> None:
        self.clusters_by_instance = clusters_by_instance

    def describe(self, instance_ids: Any) -> dict[str, Any]:
        from spot_responder.instances import Instance

        return {
            i: Instance(
                instance_id=i,
                cluster=self.clusters_by_instance[i],
                node_kind="worker",
                node_type="x86_spot_worker",
                availability_zone="us-west-2a",
                instance_type="r7i.2xlarge",
                lifecycle="spot",
                state="running",
            )
            for i in instance_ids
            if i in self.clusters_by_instance
        }


def _warm_worker() -> None:
    """Pool initializer: import what an invocation needs (a warm Lambda container).

    A worker forked after an earlier run inherits the SIGTERM handler that Ray's node
    registers in this process; that handler would keep Pool.terminate() waiting forever.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import spot_responder.adapters.channel_local
    import spot_responder.adapters.ledger_sqlite
    import spot_responder.handlers.responder  # noqa: F401


def invoke(
    event: dict[str, Any],
    addresses: dict[str, str],
    clusters_by_instance: dict[str, str],
    ledger_path: str,
    timeout_s: float,
) -> dict[str, Any]:
    """One Lambda invocation: the real handler on one batch. Runs in a pool process."""
    from spot_responder.adapters.ledger_sqlite import SqliteLedger
    from spot_responder.handlers.responder import respond
    from spot_responder.responder import Responder
    from spot_responder.settings import Settings

    started = time.time()
    router = ClusterRouter(addresses, timeout_s)
    ledger = SqliteLedger(ledger_path)
    try:
        responder = Responder(
            directory=ClusterMap(clusters_by_instance),
            channel=router,
            ledger=ledger,
            settings=Settings(),
        )
        response, report = respond(event, None, responder)
    finally:
        ledger.close()
    return {
        "started": started,
        "finished": time.time(),
        "records": len(event["Records"]),
        "failed": [f["itemIdentifier"] for f in response["batchItemFailures"]],
        "statuses": dict(Counter(s.value for s in report.statuses.values())),
        "reasons": sorted(set(report.reasons.values()))[:5],
        "commands": dict(router.sent),
        "request_sizes": router.request_sizes,
        "command_times": router.command_times,
        "outcomes": dict(Counter(n.entry.status.value for n in report.notices)),
    }


# ---------------------------------------------------------------- the burst


@dataclass
class Burst:
    """Who is warned, in which order, when each warning arrives, and how batches form."""

    instances: list[str]
    clusters_by_instance: dict[str, str]
    existing: dict[str, str]
    """instance id → Ray node id, for the workers that exist."""
    arrivals: list[float] = field(default_factory=list)


def plan_burst(existing_by_cluster: dict[str, dict[str, str]], seed: int) -> Burst:
    existing = {i: n for nodes in existing_by_cluster.values() for i, n in nodes.items()}
    clusters_by_instance = {i: name for name, nodes in existing_by_cluster.items() for i in nodes}
    unknown = [f"i-0c{n:015x}" for n in range(WARNINGS - len(existing))]
    for n, instance_id in enumerate(unknown):
        clusters_by_instance[instance_id] = CLUSTERS[n % len(CLUSTERS)]
    order = unknown[:]
    random.Random(seed).shuffle(order)
    # The workers' warnings spread over the burst, the last one among the last arrivals.
    slots = [round(k * (WARNINGS - 1) / max(1, len(existing) - 1)) for k in range(len(existing))]
    for slot, instance_id in zip(slots, sorted(existing), strict=True):
        order.insert(min(slot, len(order)), instance_id)
    arrivals = [k / WARNINGS for k in range(WARNINGS)]  # within one second
    return Burst(order, clusters_by_instance, existing, arrivals)


def batches_of(burst: Burst, batch_size: int, window_s: float) -> list[tuple[float, list[int]]]:
    """(seconds after the first warning the batch goes out, indices of its warnings)."""
    batches = []
    for start in range(0, len(burst.instances), batch_size):
        indices = list(range(start, min(start + batch_size, len(burst.instances))))
        full = len(indices) == batch_size
        due = burst.arrivals[indices[-1]] if full else burst.arrivals[indices[0]] + window_s
        batches.append((due, indices))
    return batches


def warning_event(instance_id: str, at: datetime) -> dict[str, Any]:
    from spot_responder.ledger import iso
    from tests.support import load_event

    event = load_event("spot-interruption-terminate.json")
    event["id"] = f"load-{instance_id}"
    event["time"] = iso(at)
    event["detail"]["instance-id"] = instance_id
    event["resources"] = [f"arn:aws:ec2:us-west-2a:instance/{instance_id}"]
    return event


def sqs_record(message_id: str, body: dict[str, Any], receives: int) -> dict[str, Any]:
    return {
        "messageId": message_id,
        "receiptHandle": f"{message_id}-{receives}",
        "body": json.dumps(body),
        "attributes": {"ApproximateReceiveCount": str(receives)},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-west-2:123456789012:notices",
        "awsRegion": "us-west-2",
    }


# ---------------------------------------------------------------- watching Ray


class DrainWatch:
    """Polls each cluster's GCS until every existing worker is draining (or gone drained)."""

    def __init__(self, gcs_addresses: dict[str, str], nodes: dict[str, str], poll_s: float):
        from ray._raylet import GcsClient

        self.clients = {name: GcsClient(address=a) for name, a in gcs_addresses.items()}
        self.nodes = nodes  # node id → instance id
        self.poll_s = poll_s
        self.first_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from tests.ray_hooks_support import drained_by_ray

        while not self._stop.is_set() and len(self.first_seen) < len(self.nodes):
            for client in self.clients.values():
                seen = drained_by_ray(client)
                now = time.time()
                for node_id in seen & self.nodes.keys():
                    self.first_seen.setdefault(node_id, now)
            self._stop.wait(self.poll_s)

    def wait(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        self._stop.set()


# ---------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict[str, Any]:
    from spot_responder.adapters.ledger_sqlite import SqliteLedger
    from spot_responder.cli.embedded import EmbeddedNode, EmbeddedRayCluster
    from tests import cfn

    mapping = cfn.resource("ResponderFunction")["Properties"]["Events"]["Notices"]["Properties"]
    batch_size = args.batch_size or int(mapping["BatchSize"])
    window_s = float(mapping["MaximumBatchingWindowInSeconds"])
    retry_delay_s = float(cfn.template()["Parameters"]["RetryDelaySeconds"]["Default"])
    timeout_s = float(cfn.template()["Parameters"]["CommandTimeoutSeconds"]["Default"])
    max_receives = int(
        cfn.resource("NoticeQueue")["Properties"]["RedrivePolicy"]["maxReceiveCount"]
    )

    # Warm "Lambda containers", forked before any Ray process exists.
    pool = multiprocessing.get_context("fork").Pool(args.invocations, initializer=_warm_worker)
    clusters: dict[str, EmbeddedRayCluster] = {}
    # The local stand-in for DynamoDB is a SQLite file shared by the invocations; on a
    # memory-backed file system its fsyncs do not count (--ledger-dir to choose).
    scratch = tempfile.mkdtemp(prefix="bench-load-", dir=args.ledger_dir)
    ledger_path = str(Path(scratch) / "ledger.sqlite3")
    try:
        for c, name in enumerate(CLUSTERS):
            head = EmbeddedNode(f"i-0d{c:02x}{0:013x}", "head_node", "on-demand", num_cpus=0)
            workers = [
                EmbeddedNode(f"i-0a{c:02x}{w + 1:013x}", "x86_spot_worker", "spot")
                for w in range(args.workers)
            ]
            started = time.monotonic()
            cluster = EmbeddedRayCluster(workers=workers, head=head)
            clusters[name] = cluster
            cluster.start()
            print(
                f"  cluster {name}: {1 + args.workers} raylets up in "
                f"{time.monotonic() - started:.1f} s",
                file=args.out,
                flush=True,
            )
        existing_by_cluster = {
            name: {w: cluster.node_id_for(w) for w in cluster.instance_ids[1:]}
            for name, cluster in clusters.items()
        }
        burst = plan_burst(existing_by_cluster, args.seed)
        addresses = {name: c.address for name, c in clusters.items()}
        plan = batches_of(burst, batch_size, window_s)
        watch = DrainWatch(
            {n: c.gcs_address for n, c in clusters.items()},
            {node: i for i, node in burst.existing.items()},
            args.poll_s,
        )

        # The burst: warnings arrive over one second; batches go out as the queue forms them.
        t0 = time.time()
        burst_start = datetime.fromtimestamp(t0, UTC)
        events = {
            i: warning_event(i, datetime.fromtimestamp(t0 + at, UTC))
            for i, at in zip(burst.instances, burst.arrivals, strict=True)
        }
        watch.start()
        pending = []
        for number, (due, indices) in enumerate(plan, start=1):
            time.sleep(max(0.0, t0 + due - time.time()))
            records = [
                sqs_record(f"m-{burst.instances[k]}", events[burst.instances[k]], 1)
                for k in indices
            ]
            result = pool.apply_async(
                invoke,
                (
                    {"Records": records},
                    addresses,
                    burst.clusters_by_instance,
                    ledger_path,
                    timeout_s,
                ),
            )
            pending.append((number, due, indices, 1, result))

        # Deliveries; failed records come back after the retry delay, up to maxReceiveCount.
        deliveries = []
        while pending:
            number, due, indices, receives, result = pending.pop(0)
            outcome = result.get(timeout=300)
            deliveries.append(
                {
                    "batch": number,
                    "receive": receives,
                    "due_s": due,
                    "warned_workers": sorted(
                        burst.instances[k] for k in indices if burst.instances[k] in burst.existing
                    ),
                    **outcome,
                    "started_s": outcome["started"] - t0,
                    "commands_out_s": _first_command_s(outcome["command_times"], t0),
                    "command_s": {
                        c: round(end - start, 3) for c, start, end in outcome["command_times"]
                    },
                    "finished_s": outcome["finished"] - t0,
                }
            )
            failed = set(outcome["failed"])
            if failed and receives < max_receives:
                again = [k for k in indices if f"m-{burst.instances[k]}" in failed]
                time.sleep(retry_delay_s)
                records = [
                    sqs_record(f"m-{burst.instances[k]}", events[burst.instances[k]], receives + 1)
                    for k in again
                ]
                retry = pool.apply_async(
                    invoke,
                    (
                        {"Records": records},
                        addresses,
                        burst.clusters_by_instance,
                        ledger_path,
                        timeout_s,
                    ),
                )
                pending.append((number, time.time() - t0, again, receives + 1, retry))
        watch.wait(args.drain_timeout)

        ledger = SqliteLedger(ledger_path)
        entries = [e for e in ledger.entries(limit=10_000) if e.kind == "spot-interruption"]
        ledger.close()
        drain_times = {i: watch.first_seen.get(node) for i, node in burst.existing.items()}
        return {
            "burst_start": burst_start.isoformat(timespec="milliseconds"),
            "clusters": len(CLUSTERS),
            "raylets_per_cluster": 1 + args.workers,
            "warnings": WARNINGS,
            "existing_workers": len(burst.existing),
            "batch_size": batch_size,
            "batching_window_s": window_s,
            "batches": len(plan),
            "ledger_dir": args.ledger_dir or tempfile.gettempdir(),
            "max_receive_count": max_receives,
            "deliveries": deliveries,
            "drained_at_s": {
                i: None if seen is None else round(seen - t0, 3) for i, seen in drain_times.items()
            },
            "warned_at_s": {
                i: round(burst.arrivals[burst.instances.index(i)], 3) for i in burst.existing
            },
            "cluster_of": {i: burst.clusters_by_instance[i] for i in burst.existing},
            "ledger": {
                "entries": len(entries),
                "distinct_instances": len({e.instance_id for e in entries}),
                "statuses": dict(Counter(e.status.value for e in entries)),
            },
        }
    finally:
        pool.terminate()
        pool.join()
        for cluster in clusters.values():
            cluster.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)


def _first_command_s(command_times: list[tuple[str, float, float]], t0: float) -> float | None:
    return round(min(start for _, start, _ in command_times) - t0, 3) if command_times else None


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    per_cluster_batch = [
        count for d in result["deliveries"] if d["receive"] == 1 for count in d["commands"].values()
    ]
    drained = result["drained_at_s"]
    all_drained = all(t is not None for t in drained.values())
    last_warning = max(result["warned_at_s"].values())
    return {
        "commands_total": sum(sum(d["commands"].values()) for d in result["deliveries"]),
        "max_commands_per_cluster_per_batch": max(per_cluster_batch, default=0),
        "retried_records": sum(len(d["failed"]) for d in result["deliveries"]),
        "dead_lettered_records": sum(
            len(d["failed"])
            for d in result["deliveries"]
            if d["receive"] >= result["max_receive_count"]
        ),
        "first_warning_to_all_draining_s": max(drained.values()) if all_drained else None,
        "last_warning_to_all_draining_s": (
            round(max(drained.values()) - last_warning, 3) if all_drained else None
        ),
        "max_warning_to_draining_s": (
            max(round(t - result["warned_at_s"][i], 3) for i, t in drained.items())
            if all_drained
            else None
        ),
        "recorded": result["ledger"]["distinct_instances"],
        "ledger_statuses": result["ledger"]["statuses"],
    }


def _seconds(value: float | None) -> str:
    return "not all drained" if value is None else f"{value:.3f}"


def _sizes(request_sizes: dict[str, list[int]]) -> str:
    return " ".join(f"{c}:{'+'.join(map(str, s))}" for c, s in sorted(request_sizes.items()))


def _pairs(counts: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))


def headline(runs: list[dict[str, Any]]) -> str:
    summaries = [r["summary"] for r in runs]
    first = [s["first_warning_to_all_draining_s"] for s in summaries]
    measured = [x for x in first if x is not None]
    median_first = statistics.median(measured) if len(measured) == len(first) else None
    result = runs[0]["result"]
    names = [f"run {n}" for n in range(1, len(runs) + 1)]
    rows = [
        [
            "head-node commands, total",
            *[s["commands_total"] for s in summaries],
            f"{result['batches']} batches x {result['clusters']} clusters = "
            f"{result['batches'] * result['clusters']}",
        ],
        [
            "commands per cluster per batch, max",
            *[s["max_commands_per_cluster_per_batch"] for s in summaries],
            "1",
        ],
        [
            "first warning → every existing worker draining, s",
            *map(_seconds, first),
            f"≤ {TARGET_DRAIN_S:.0f} (median {_seconds(median_first)})",
        ],
        [
            "last warning → every existing worker draining, s",
            *[_seconds(s["last_warning_to_all_draining_s"]) for s in summaries],
            "",
        ],
        [
            "slowest warning → its worker draining, s",
            *[_seconds(s["max_warning_to_draining_s"]) for s in summaries],
            "",
        ],
        [
            "notices in the ledger",
            *[f"{s['recorded']}/{result['warnings']}" for s in summaries],
            str(result["warnings"]),
        ],
        [
            "ledger statuses",
            *[_pairs(s["ledger_statuses"]) for s in summaries],
            f"drained:{result['existing_workers']} "
            f"node-not-found:{result['warnings'] - result['existing_workers']}",
        ],
        ["records retried", *[s["retried_records"] for s in summaries], "0"],
        ["records dead-lettered", *[s["dead_lettered_records"] for s in summaries], "0"],
    ]
    return table(["figure", *names, "target"], rows)


def details(run_: dict[str, Any]) -> str:
    result = run_["result"]
    deliveries = table(
        [
            "batch",
            "receive",
            "records",
            "out at s",
            "commands sent at s",
            "command s per cluster",
            "done at s",
            "commands per cluster",
            "notices per command",
            "statuses",
            "workers warned",
        ],
        [
            [
                d["batch"],
                d["receive"],
                d["records"],
                round(d["due_s"], 3),
                "-" if d["commands_out_s"] is None else d["commands_out_s"],
                _pairs(d["command_s"]),
                round(d["finished_s"], 3),
                _pairs(d["commands"]),
                _sizes(d["request_sizes"]),
                _pairs(d["statuses"]),
                len(d["warned_workers"]),
            ]
            for d in result["deliveries"]
        ],
    )
    workers = table(
        ["worker", "cluster", "warned at s", "draining at s (GCS)", "warning → draining s"],
        [
            [
                i,
                result["cluster_of"][i],
                result["warned_at_s"][i],
                "not seen" if t is None else t,
                "-" if t is None else round(t - result["warned_at_s"][i], 3),
            ]
            for i, t in sorted(result["drained_at_s"].items(), key=lambda kv: kv[1] or 1e9)
        ],
    )
    return "\n".join(["### Batches", "", deliveries, "", "### Existing workers", "", workers])


def render(data: dict[str, Any]) -> str:
    runs = data["runs"]
    result = runs[0]["result"]
    parts = [
        "# Load",
        "",
        f"Machine: {machine_line(data['machine'])}.",
        "",
        f"Command: `make bench-load`. {result['clusters']} real local Ray clusters of "
        f"{result['raylets_per_cluster']} raylets (fresh for each run); "
        f"{result['warnings']} spot warnings arriving evenly within one second "
        f"({result['existing_workers']} for existing workers, the rest for instances no "
        f"node carries); batches of {result['batch_size']} (template BatchSize), the last "
        f"one {result['batching_window_s']:.0f} s (the batching window) after its first "
        "record; one handler invocation per batch, running in parallel; each command is "
        "`python -m ray_hooks respond` on that cluster. Times are seconds after the first "
        "warning unless the row says otherwise; draining is what each cluster's GCS reports. "
        f"The ledger is the local SQLite stand-in for DynamoDB, in `{result['ledger_dir']}`; "
        "'commands sent at' minus 'out at' is the claim phase (parse, claim every notice "
        "in the ledger, resolve, decide).",
        "",
        headline(runs),
        "",
        "![head-node commands and drains over time](load.png)",
    ]
    for number, run_ in enumerate(runs, start=1):
        parts += ["", f"## Run {number}", "", details(run_)]
    return "\n".join(parts)


def plot(data: dict[str, Any], path: Path) -> None:
    """Per run: each cluster's head-node commands over time (one bar per batch), when each
    existing worker was warned and when its GCS first said it was draining."""
    plt = pyplot()

    runs = data["runs"]
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 2.4 * len(runs) + 1), sharex=True)
    colors = ("tab:blue", "tab:orange", "tab:purple")
    for number, (ax, run_) in enumerate(zip(list(axes), runs, strict=True), start=1):
        result, summary = run_["result"], run_["summary"]
        t0 = datetime.fromisoformat(result["burst_start"]).timestamp()
        clusters = sorted({c for d in result["deliveries"] for c in d["commands"]})
        for d in result["deliveries"]:
            for name, start, end in d["command_times"]:
                y = clusters.index(name) + 0.25 * (d["batch"] - 2)
                ax.plot(
                    [start - t0, end - t0],
                    [y, y],
                    color=colors[(d["batch"] - 1) % 3],
                    linewidth=5,
                    solid_capstyle="butt",
                    label=f"batch {d['batch']} command" if name == clusters[0] else None,
                )
        for row, cluster in enumerate(clusters):
            workers = [i for i, c in result["cluster_of"].items() if c == cluster]
            ax.scatter(
                [result["warned_at_s"][i] for i in workers],
                [row] * len(workers),
                marker="v",
                color="black",
                zorder=3,
                label="worker warned" if row == 0 else None,
            )
            drained = [result["drained_at_s"][i] for i in workers if result["drained_at_s"][i]]
            ax.scatter(
                drained,
                [row] * len(drained),
                marker="D",
                color="tab:green",
                zorder=3,
                label="GCS says draining" if row == 0 else None,
            )
        ax.axvspan(0, 1, color="gray", alpha=0.12, label="the 128 warnings arrive")
        ax.axvline(
            TARGET_DRAIN_S,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"target {TARGET_DRAIN_S:.0f} s",
        )
        ax.set_yticks(range(len(clusters)), clusters)
        ax.set_ylim(-0.7, len(clusters) - 0.3)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(
            f"run {number}: {summary['commands_total']} commands, every existing worker "
            f"draining {summary['first_warning_to_all_draining_s']:.2f} s after the first "
            f"warning, {summary['recorded']}/{result['warnings']} in the ledger",
            fontsize=10,
        )
    axes[-1].set_xlabel("seconds after the first warning")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", fontsize=8, ncol=len(labels))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        choices=(1, 2, 3),
        help="spot workers per cluster (2; at most 4 raylets per cluster)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="records per batch (default: BatchSize of template.yaml)",
    )
    parser.add_argument(
        "--invocations", type=int, default=3, help="handler invocations that may run at once (3)"
    )
    parser.add_argument("--runs", type=int, default=3, help="bursts, each on fresh clusters (3)")
    parser.add_argument("--seed", type=int, default=5, help="order of the warnings")
    parser.add_argument("--poll-s", type=float, default=0.05, help="GCS polling interval")
    parser.add_argument("--drain-timeout", type=float, default=60)
    parser.add_argument(
        "--ledger-dir",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where the SQLite ledger lives (default /dev/shm when there is one)",
    )
    replot_option(parser, "load")
    args = parser.parse_args(argv)

    if args.replot:
        data = saved("load")
    else:
        info = machine()
        runs = []
        with quiet_stdio() as out:
            args.out = out
            for number in range(1, args.runs + 1):
                out.write(f"run {number}: starting three Ray clusters ...\n")
                result = run(args)
                runs.append({"result": result, "summary": summarize(result)})
                out.write(
                    f"run {number}: every existing worker draining "
                    f"{_seconds(runs[-1]['summary']['first_warning_to_all_draining_s'])} s "
                    "after the first warning\n"
                )
        data = {"benchmark": "load", "machine": info, "runs": runs}
    publish("load", data, render(data), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
