"""Speed: the handler's own overhead, `ray_hooks respond` on a real cluster, cold start.

    make bench-speed        # .venv/bin/python -m tests.benchmarks.bench_speed

1. Handler overhead per batch of 1, 10 and 50 records (one cluster), and per notice: the
   real handler (`respond`: parse, claim in the ledger, resolve, decide, one request per
   cluster, write outcomes, logs and metrics) with the cluster call taken out (a
   `FakeChannel`, whose own time is subtracted). Ledger: the local SQLite file, and SQLite
   in memory (the handler without ledger I/O). Logs and metrics go to /dev/null.
2. `python -m ray_hooks respond` on a real local Ray cluster (head + 2 spot workers): from
   process start to the drain issued (the response's `drain_issued_at`) and to the
   response (the process's wall time), with ray_hooks' own `timings`.
3. Cold start: importing `spot_responder.handlers.responder` in fresh processes with the
   Lambda's environment (tracing on), median of several; and the size of the built
   function package (`.aws-sam/build/ResponderFunction`, from `make stack`) if present.

Figures are printed and written to tests/benchmarks/results/speed.{json,md}; nothing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.benchmarks.report import (
    ROOT,
    machine,
    machine_line,
    median,
    p90,
    quiet_stdio,
    table,
    write_results,
)

BATCH_SIZES = (1, 10, 50)
LAMBDA_ENV = {
    "AWS_LAMBDA_FUNCTION_NAME": "spot-responder-responder",
    "AWS_REGION": "us-west-2",
    "POWERTOOLS_SERVICE_NAME": "spot-responder",
    "POWERTOOLS_METRICS_NAMESPACE": "SpotResponder",
}
IMPORT_PROBE = (
    "import time; started = time.perf_counter(); "
    "import spot_responder.handlers.responder; "
    "print(time.perf_counter() - started)"
)


# ---------------------------------------------------------------- 1. handler overhead


class TimedChannel:
    """A FakeChannel that adds up the time spent inside it (to take it out again)."""

    def __init__(self) -> None:
        from tests.support import FakeChannel

        self.inner = FakeChannel()
        self.seconds = 0.0
        self._lock = threading.Lock()

    def send(self, cluster: str, request: dict[str, Any]) -> Any:
        started = time.perf_counter()
        try:
            return self.inner.send(cluster, request)
        finally:
            with self._lock:
                self.seconds += time.perf_counter() - started


def _warning(instance_id: str, event_id: str) -> dict[str, Any]:
    from spot_responder.ledger import iso
    from tests.support import load_event

    event = load_event("spot-interruption-terminate.json")
    event["id"] = event_id
    event["time"] = iso(datetime.now(UTC))
    event["detail"]["instance-id"] = instance_id
    return event


def handler_overhead(ledger_kind: str, repeats: int, warmup: int, work_dir: Path) -> list[dict]:
    from spot_responder.adapters.ledger_sqlite import SqliteLedger
    from spot_responder.handlers.responder import respond
    from spot_responder.responder import Responder
    from spot_responder.settings import Settings
    from tests.support import FakeDirectory, ray_instance, sqs_event

    rows = []
    for size in BATCH_SIZES:
        path = ":memory:" if ledger_kind == "memory" else work_dir / f"ledger-{size}.sqlite3"
        ledger = SqliteLedger(path)
        batch_ms: list[float] = []
        for round_ in range(warmup + repeats):
            ids = [f"i-{size:02x}{round_:05x}{k:010x}" for k in range(size)]
            directory = FakeDirectory(*(ray_instance(i) for i in ids))
            event = sqs_event(*(_warning(i, f"e-{i}") for i in ids))
            channel = TimedChannel()
            responder = Responder(
                directory=directory, channel=channel, ledger=ledger, settings=Settings()
            )
            started = time.perf_counter()
            response, _ = respond(event, None, responder)
            elapsed = time.perf_counter() - started - channel.seconds
            assert response == {"batchItemFailures": []}, response
            assert len(channel.inner.drained) == size
            if round_ >= warmup:
                batch_ms.append(elapsed * 1000)
        ledger.close()
        rows.append(
            {
                "ledger": "SQLite file" if ledger_kind == "file" else "SQLite in memory",
                "records": size,
                "batches": repeats,
                "batch_ms_median": median(batch_ms),
                "batch_ms_p90": p90(batch_ms),
                "per_notice_ms_median": median(batch_ms) / size,
                "samples_ms": [round(x, 3) for x in batch_ms],
            }
        )
    return rows


# ---------------------------------------------------------------- 2. ray_hooks respond


def _respond_once(address: str, notices: list[dict[str, Any]], label: str) -> dict[str, Any]:
    from tests.ray_hooks_support import request

    payload = json.dumps(request(*notices, request_id=f"bench-{label}"))
    spawned_at = time.time()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ray_hooks", "respond", "--address", address],
        input=payload,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    wall = time.perf_counter() - started
    document = json.loads(done.stdout) if done.stdout.strip() else {}
    results = document.get("results", [])
    issued = [r["drain_issued_at"] for r in results if r.get("drain_issued_at")]
    to_drain = None
    if issued:
        last = max(datetime.fromisoformat(t.replace("Z", "+00:00")) for t in issued)
        to_drain = last.timestamp() - spawned_at
    return {
        "label": label,
        "exit_code": done.returncode,
        "notices": len(notices),
        "outcomes": sorted({r["outcome"] for r in results}),
        "spawn_to_drain_issued_s": to_drain,
        "spawn_to_response_s": wall,
        "ray_hooks_drain_s": (document.get("timings") or {}).get("drain_s"),
        "ray_hooks_total_s": (document.get("timings") or {}).get("total_s"),
        "stderr_tail": done.stderr[-300:] if done.returncode else "",
    }


def ray_hooks_timings(not_found_runs: int) -> list[dict[str, Any]]:
    from spot_responder.cli.embedded import SPOT_WORKERS, EmbeddedRayCluster
    from tests.ray_hooks_support import notice

    deadline = datetime.now(UTC) + timedelta(minutes=10)
    runs = []
    with EmbeddedRayCluster() as cluster:  # head + 2 spot workers
        for worker in SPOT_WORKERS:  # a drained node leaves: one fresh drain per worker
            runs.append(
                _respond_once(
                    cluster.address,
                    [notice(worker.instance_id, deadline=deadline)],
                    "drain-1-worker",
                )
            )
        for n in range(not_found_runs):
            unknown = f"i-0e0e0e0e0e0e{n:05x}"
            runs.append(_respond_once(cluster.address, [notice(unknown)], "node-not-found-1"))
        fifty = [notice(f"i-0f0f0f0f0f0f{n:05x}") for n in range(50)]
        runs.append(_respond_once(cluster.address, fifty, "node-not-found-50"))
    return runs


# ---------------------------------------------------------------- 3. cold start


def cold_start_imports(runs: int) -> dict[str, Any]:
    env = {**os.environ, **LAMBDA_ENV}
    import_s, process_s = [], []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", IMPORT_PROBE],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=True,
        )
        process_s.append(time.perf_counter() - started)
        import_s.append(float(done.stdout.strip().splitlines()[-1]))
    return {
        "runs": runs,
        "import_s_median": median(import_s),
        "import_s_min": min(import_s),
        "import_s_max": max(import_s),
        "process_s_median": median(process_s),
        "samples_import_s": [round(x, 3) for x in import_s],
    }


def package_size() -> dict[str, Any] | None:
    build = ROOT / ".aws-sam" / "build" / "ResponderFunction"
    if not build.is_dir():
        return None
    files = [p for p in build.rglob("*") if p.is_file()]
    unzipped = sum(p.stat().st_size for p in files)
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "function.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
            for path in files:
                zipped.write(path, path.relative_to(build))
        zipped_bytes = archive.stat().st_size
    own = sum(p.stat().st_size for p in (ROOT / "functions" / "spot_responder").rglob("*.py"))
    built = datetime.fromtimestamp(build.stat().st_mtime, UTC)
    return {
        "path": str(build.relative_to(ROOT)),
        "built_at": built.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "files": len(files),
        "unzipped_mib": round(unzipped / 2**20, 1),
        "zipped_mib": round(zipped_bytes / 2**20, 1),
        "own_code_kib": round(own / 1024, 1),
    }


# ---------------------------------------------------------------- report


def render(data: dict[str, Any]) -> str:
    parts = [
        "# Speed",
        "",
        f"Machine: {machine_line(data['machine'])}.",
        "",
        "Command: `make bench-speed`.",
        "",
        "## Handler overhead (cluster call excluded)",
        "",
        table(
            [
                "ledger",
                "records/batch",
                "batches",
                "batch ms (median)",
                "batch ms (p90)",
                "ms per notice",
            ],
            [
                [
                    r["ledger"],
                    r["records"],
                    r["batches"],
                    r["batch_ms_median"],
                    r["batch_ms_p90"],
                    r["per_notice_ms_median"],
                ]
                for r in data["handler_overhead"]
            ],
        ),
        "",
        "## `python -m ray_hooks respond` on a real cluster (head + 2 spot workers)",
        "",
        table(
            [
                "request",
                "outcomes",
                "start → drain issued s",
                "start → response s",
                "ray_hooks drain_s",
                "ray_hooks total_s",
            ],
            [
                [
                    r["label"],
                    ",".join(r["outcomes"]) or f"exit {r['exit_code']}",
                    "-" if r["spawn_to_drain_issued_s"] is None else r["spawn_to_drain_issued_s"],
                    r["spawn_to_response_s"],
                    r["ray_hooks_drain_s"],
                    r["ray_hooks_total_s"],
                ]
                for r in data["ray_hooks_respond"]
            ],
        ),
        "",
        "## Cold start",
        "",
    ]
    cold = data["cold_start"]
    rows = [
        [
            "import spot_responder.handlers.responder (median of "
            f"{cold['runs']} fresh processes, Lambda env, tracing on)",
            f"{cold['import_s_median']:.3f} s (min {cold['import_s_min']:.3f}, "
            f"max {cold['import_s_max']:.3f})",
        ],
        ["python process start → import done → exit (median)", f"{cold['process_s_median']:.3f} s"],
    ]
    package = data.get("package")
    if package:
        rows.append(
            [
                f"package `{package['path']}` (built {package['built_at']})",
                f"{package['unzipped_mib']} MiB unzipped, {package['zipped_mib']} MiB zipped, "
                f"{package['files']} files; own code {package['own_code_kib']} KiB",
            ]
        )
    else:
        rows.append(["package", "not built (`make stack` runs `sam build`)"])
    parts.append(table(["what", "figure"], rows))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="batches per size (30)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--imports", type=int, default=7, help="fresh import processes (7)")
    parser.add_argument("--not-found-runs", type=int, default=5)
    args = parser.parse_args(argv)

    data: dict[str, Any] = {"benchmark": "speed", "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as scratch, quiet_stdio() as out:
        out.write("handler overhead ...\n")
        data["handler_overhead"] = [
            *handler_overhead("file", args.repeats, args.warmup, Path(scratch)),
            *handler_overhead("memory", args.repeats, args.warmup, Path(scratch)),
        ]
        out.write("ray_hooks respond on a real cluster ...\n")
        data["ray_hooks_respond"] = ray_hooks_timings(args.not_found_runs)
        out.write("cold start ...\n")
        data["cold_start"] = cold_start_imports(args.imports)
        data["package"] = package_size()
    markdown = render(data)
    json_path, md_path = write_results("speed", data, markdown)
    print(markdown)
    print(f"\nwritten: {json_path.relative_to(ROOT)}, {md_path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
