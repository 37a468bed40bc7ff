"""What every benchmark writes: the machine, the date, a table on stdout, JSON + markdown files.

Results go to tests/benchmarks/results/<name>.json (raw figures) and <name>.md (the table),
each with the machine it ran on (CPU model, cores, RAM, load average at the start: other
people's Ray clusters may share this machine) and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[2]


def machine() -> dict[str, Any]:
    cpu_model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    ram_gib = None
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    import ray

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": ram_gib,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "git_commit": _git_commit(),
    }


def _git_commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    changed = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
    return (done.stdout.strip() or "unknown") + (" with uncommitted changes" if changed else "")


def machine_line(info: dict[str, Any]) -> str:
    load = " / ".join(str(x) for x in info["load_average_at_start"])
    return (
        f"{info['date']} on {info['nproc']} cores ({info['cpu_model']}), "
        f"{info['ram_gib']} GiB RAM, load {load} at the start; "
        f"Python {info['python']}, Ray {info['ray']}, commit {info['git_commit']}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (it reads fine on a terminal too)."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p90(values: Sequence[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def replot_option(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(
        "--replot", action="store_true", help=f"redraw the table and PNG from {name}.json"
    )


def pyplot() -> Any:
    """matplotlib.pyplot, drawing to files only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def saved(name: str) -> dict[str, Any]:
    """The raw figures of the last run (`--replot` redraws from them)."""
    data: dict[str, Any] = json.loads((RESULTS / f"{name}.json").read_text())
    return data


def publish(
    name: str, data: dict[str, Any], markdown: str, plot: Callable[[dict[str, Any], Path], None]
) -> None:
    """Write <name>.json, <name>.md and <name>.png to RESULTS; print the table and the files."""
    json_path, md_path = write_results(name, data, markdown)
    png_path = RESULTS / f"{name}.png"
    plot(data, png_path)
    print(markdown)
    written = ", ".join(str(p.relative_to(ROOT)) for p in (json_path, md_path, png_path))
    print(f"\nwritten: {written}")


def write_results(name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{name}.json"
    md_path = RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


@contextmanager
def quiet_stdio() -> Iterator[TextIO]:
    """Send what the code under test writes to fd 1 and 2 (logs, metrics) to /dev/null,
    as CloudWatch would take it; yield a stream on the real stdout for the report."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    report = os.fdopen(os.dup(saved_out), "w", buffering=1)
    try:
        yield report
    finally:
        report.flush()
        report.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
