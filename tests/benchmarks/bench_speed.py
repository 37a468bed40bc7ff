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
3. `spot-responder replay --ray-address` against a running cluster, a fresh process each:
   from process start to the drain issued and to exit.
4. Cold start: importing `spot_responder.handlers.responder` in fresh processes, from a
   package laid out as functions/Makefile builds it, with and without its bytecode, with the
   Lambda's environment (tracing on), median of several; and the size of the built
   function package (`.aws-sam/build/ResponderFunction`, from `make stack`) if present.

Figures are printed and written to tests/benchmarks/results/speed.{json,md}; nothing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
    publish,
    pyplot,
    quiet_stdio,
    replot_option,
    saved,
    table,
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


def replay_timings(clusters: int, work_dir: Path) -> list[dict[str, Any]]:
    """`spot-responder replay --ray-address` as a user runs it, against a running cluster:
    from process start to the drain issued and to exit (one warning per spot worker, a
    fresh cluster for each pair)."""
    from spot_responder.cli.embedded import SPOT_WORKERS, EmbeddedRayCluster
    from tests.support import spot_responder

    runs = []
    for c in range(clusters):
        with EmbeddedRayCluster() as cluster:
            for worker in SPOT_WORKERS:
                event = _warning(worker.instance_id, f"bench-replay-{c}-{worker.instance_id}")
                path = work_dir / f"warning-{c}-{worker.instance_id}.json"
                path.write_text(json.dumps(event))
                spawned_at = time.time()
                done = spot_responder(
                    *("replay", "--ray-address", cluster.address, "--json"),
                    *("--ledger", str(work_dir / f"replay-{c}.sqlite3"), str(path)),
                    timeout_s=120,
                )
                wall = time.time() - spawned_at
                notices = json.loads(done.stdout) if done.returncode == 0 else [{}]
                issued = notices[0].get("drain_issued_at")
                runs.append(
                    {
                        "instance_id": worker.instance_id,
                        "exit_code": done.returncode,
                        "action": notices[0].get("action"),
                        "spawn_to_drain_issued_s": (
                            None
                            if issued is None
                            else datetime.fromisoformat(issued).timestamp() - spawned_at
                        ),
                        "spawn_to_exit_s": wall,
                        "stderr_tail": done.stderr[-300:] if done.returncode else "",
                    }
                )
    return runs


# ---------------------------------------------------------------- 3. cold start


def cold_start_imports(runs: int, work_dir: Path) -> dict[str, Any] | None:
    """The handler's imports in fresh processes, from the package functions/Makefile builds
    (python3.12; this machine's wheels instead of arm64 ones), with Lambda's environment and
    `-B` (Lambda's disk is read-only: nothing compiled is kept). First as built, with its
    bytecode; then with the bytecode removed, as `sam build` made the package before."""
    python = _python312()
    if python is None:
        return None
    package = work_dir / "package"
    subprocess.run(
        [
            *("make", "--silent", "-C", str(ROOT / "functions"), "build-ResponderFunction"),
            f"ARTIFACTS_DIR={package}",
            f"LAMBDA_PYTHON={python}",
            f"LAMBDA_PLATFORM=manylinux2014_{platform.machine()}",
        ],
        check=True,
    )
    with_bytecode = _import_times(python, package, runs)
    for cache in list(package.rglob("__pycache__")):
        shutil.rmtree(cache)
    without = _import_times(python, package, runs)
    version = subprocess.run(
        [python, "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    return {
        "python": version,
        "runs": runs,
        "without_bytecode": without,
        "with_bytecode": with_bytecode,
    }


def _import_times(python: str, package: Path, runs: int) -> dict[str, Any]:
    env = {"PATH": os.environ.get("PATH", ""), **LAMBDA_ENV}
    import_s, process_s = [], []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [python, "-B", "-s", "-c", IMPORT_PROBE],
            capture_output=True,
            text=True,
            env=env,
            cwd=package,
            check=True,
        )
        process_s.append(time.perf_counter() - started)
        import_s.append(float(done.stdout.strip().splitlines()[-1]))
    return {
        "import_s_median": median(import_s),
        "import_s_min": min(import_s),
        "import_s_max": max(import_s),
        "process_s_median": median(process_s),
        "samples_import_s": [round(x, 3) for x in import_s],
    }


def _python312() -> str | None:
    """The Lambda runtime's Python here: pyenv's 3.12 install, else python3.12 on PATH."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for candidate in [
        *sorted(root.glob("versions/3.12.*/bin/python3.12")),
        shutil.which("python3.12"),
    ]:
        if (
            candidate
            and subprocess.run([str(candidate), "-c", "pass"], check=False).returncode == 0
        ):
            return str(candidate)
    return None


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
        "## `spot-responder replay --ray-address` (a user's replay against a running cluster)",
        "",
        "A fresh process each: the CLI loads the handler while the cluster's nodes are listed, "
        "then the handler claims, decides and runs `ray_hooks respond` on the cluster.",
        "",
        table(
            ["instance", "action", "start → drain issued s", "start → exit s"],
            [
                [
                    r["instance_id"],
                    r["action"] or f"exit {r['exit_code']}",
                    "-" if r["spawn_to_drain_issued_s"] is None else r["spawn_to_drain_issued_s"],
                    r["spawn_to_exit_s"],
                ]
                for r in data.get("replay", [])
            ],
        ),
        "",
        "## Cold start",
        "",
    ]
    cold = data["cold_start"]
    rows = []
    if cold is None:
        rows.append(["cold start", "not measured: no python3.12 here"])
    else:
        for key, how in (
            (
                "without_bytecode",
                "no bytecode, as `sam build` shipped it before functions/Makefile",
            ),
            ("with_bytecode", "with the bytecode functions/Makefile adds"),
        ):
            figures = cold[key]
            rows.append(
                [
                    f"import spot_responder.handlers.responder, {how} (Python {cold['python']}, "
                    f"Lambda env, tracing on, `-B`; median of {cold['runs']} fresh processes)",
                    f"{figures['import_s_median']:.3f} s (min {figures['import_s_min']:.3f}, "
                    f"max {figures['import_s_max']:.3f}); process start to exit "
                    f"{figures['process_s_median']:.3f} s",
                ]
            )
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
    parts += ["", "![handler overhead and time to the drain](speed.png)"]
    return "\n".join(parts)


def plot(data: dict[str, Any], path: Path) -> None:
    """Left: the handler's cost per batch size. Right: each fresh process, spawn → drain
    issued → done, for `ray_hooks respond` alone and for a whole `spot-responder replay`."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8), width_ratios=(1, 1.4))
    for ledger, color in (("SQLite file", "tab:orange"), ("SQLite in memory", "tab:blue")):
        rows = [r for r in data["handler_overhead"] if r["ledger"] == ledger]
        sizes = [r["records"] for r in rows]
        medians = [r["batch_ms_median"] for r in rows]
        left.plot(sizes, medians, "o-", color=color, label=f"{ledger}: median")
        left.plot(sizes, [r["batch_ms_p90"] for r in rows], "x:", color=color, label="p90")
    left.set_xlabel("records per batch")
    left.set_ylabel("handler ms per batch (cluster call excluded)")
    left.set_title("Handler overhead", fontsize=10)
    left.grid(alpha=0.3)
    left.legend(fontsize=7)

    runs = [
        (f"ray_hooks respond: {r['label']}", r["spawn_to_drain_issued_s"], r["spawn_to_response_s"])
        for r in data["ray_hooks_respond"]
    ] + [
        (
            f"replay --ray-address: {r['instance_id'][-5:]}",
            r["spawn_to_drain_issued_s"],
            r["spawn_to_exit_s"],
        )
        for r in data.get("replay", [])
    ]
    for n, (_, to_drain, to_end) in enumerate(runs):
        if to_drain is not None:
            right.barh(
                n, to_drain, color="tab:green", label="spawn → drain issued" if n == 0 else None
            )
        start = to_drain or 0.0
        right.barh(
            n, to_end - start, left=start, color="tab:gray", label="→ done" if n == 0 else None
        )
    right.set_yticks(range(len(runs)), [label for label, _, _ in runs], fontsize=7)
    right.invert_yaxis()
    right.set_xlabel("seconds from spawning the process")
    right.set_title("Fresh processes against a real local cluster", fontsize=10)
    right.grid(axis="x", alpha=0.3)
    right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="batches per size (30)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--imports", type=int, default=7, help="fresh import processes (7)")
    parser.add_argument("--not-found-runs", type=int, default=5)
    parser.add_argument(
        "--replay-clusters", type=int, default=3, help="clusters for the replay timings (3)"
    )
    replot_option(parser, "speed")
    args = parser.parse_args(argv)
    data = saved("speed") if args.replot else _run(args)
    publish("speed", data, render(data), plot)
    return 0


def _run(args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {"benchmark": "speed", "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as scratch, quiet_stdio() as out:
        out.write("handler overhead ...\n")
        data["handler_overhead"] = [
            *handler_overhead("file", args.repeats, args.warmup, Path(scratch)),
            *handler_overhead("memory", args.repeats, args.warmup, Path(scratch)),
        ]
        out.write("ray_hooks respond on a real cluster ...\n")
        data["ray_hooks_respond"] = ray_hooks_timings(args.not_found_runs)
        out.write("spot-responder replay against a running cluster ...\n")
        data["replay"] = replay_timings(args.replay_clusters, Path(scratch))
        out.write("cold start ...\n")
        data["cold_start"] = cold_start_imports(args.imports, Path(scratch))
        data["package"] = package_size()
    return data


if __name__ == "__main__":
    sys.exit(main())
