"""How the CLI shows notices and ledger entries to people (text) and programs (JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spot_responder.ledger import JobHit, LedgerEntry, Status
from spot_responder.responder import BatchReport, NoticeReport


def notice_json(report: NoticeReport) -> dict[str, Any]:
    data = entry_json(report.entry)
    data["duplicate"] = report.duplicate
    if report.duplicate:
        data["action"] = "duplicate"
    return data


def entry_json(entry: LedgerEntry) -> dict[str, Any]:
    data = entry.to_dict()
    data["notice_key"] = data.pop("key")
    data["action"] = entry.status.value
    data["decision"] = entry.action
    data["deadline"] = entry.drain_deadline
    return data


def in_record_order(report: BatchReport) -> list[NoticeReport]:
    """The notices in the order their records came in (the batch finishes them out of order)."""
    order = {message_id: n for n, message_id in enumerate(report.statuses)}
    return sorted(report.notices, key=lambda item: order.get(item.message_id, len(order)))


def replay_table(report: BatchReport, *, elapsed_s: float, ledger: Path) -> str:
    lines = [f"{'INSTANCE':<21} {'KIND':<28} {'ACTION':<17} {'RAY NODE':<10} {'DEADLINE':<14} JOBS"]
    for item in in_record_order(report):
        entry = item.entry
        action = "duplicate" if item.duplicate else entry.status.value
        if entry.status is Status.ALERTED and not item.duplicate:
            action = "ALERTED (head)"
        lines.append(
            f"{entry.instance_id or '-':<21} {_kind(entry):<28} {action:<17} "
            f"{(entry.ray_node_id or '-')[:8]:<10} {_clock(entry.drain_deadline):<14} "
            f"{_jobs_judged(entry)}"
        )
        if entry.reason:
            lines.append(f"{'':<21} └ {entry.reason}")
        if entry.replacement and not item.duplicate:
            lines.append(f"{'':<21} └ replacement {_replacement(entry.replacement)}")
        for job in entry.impacted_jobs:
            if job.get("verdict"):
                lines.append(
                    f"{'':<21} └ job {job.get('job_id')} {job['verdict']}: {_first_reason(job)}"
                )
    lines.append("")
    lines.append(
        f"{len(report.notices)} notice(s), {report.requests_sent} cluster request(s), "
        f"{elapsed_s:.2f} s; ledger: {ledger}"
    )
    return "\n".join(lines)


def ledger_table(entries: list[LedgerEntry]) -> str:
    lines = [f"{'RECORDED':<20} {'INSTANCE':<21} {'KIND':<28} {'STATUS':<17} {'CLUSTER':<14} JOBS"]
    for entry in entries:
        lines.append(
            f"{entry.recorded_at[:19]:<20} {entry.instance_id or '-':<21} {_kind(entry):<28} "
            f"{entry.status.value:<17} {(entry.cluster or '-')[:14]:<14} {_jobs(entry)}"
        )
    return "\n".join(lines) if entries else "the ledger is empty"


def _outcome(impact: dict[str, Any]) -> str:
    """What really happened to the job once the node was gone; "-" until reconcile saw it."""
    outcome = impact.get("outcome")
    return str(outcome.get("outcome") or "-") if isinstance(outcome, dict) else "-"


def jobs_table(hits: list[JobHit]) -> str:
    lines = [
        f"{'CLUSTER':<14} {'JOB':<10} {'RECORDED':<20} {'INSTANCE':<21} {'STATUS':<17} "
        f"{'VERDICT':<13} {'OUTCOME':<10} WORK"
    ]
    for hit in hits:
        impact = hit.impact
        objects = impact.get("objects") or {}
        work = (
            f"{impact.get('tasks_running', 0)} task(s), {impact.get('actors_alive', 0)} actor(s)"
            + (
                f", {objects.get('count', 0)} object(s) ({objects.get('lost_count', 0)} lost)"
                if objects.get("count")
                else ""
            )
            + (
                f", {impact['compute_redone_s']:.0f} s redone"
                if impact.get("compute_redone_s")
                else ""
            )
        )
        lines.append(
            f"{hit.cluster[:14]:<14} {hit.job_id:<10} {hit.recorded_at[:19]:<20} "
            f"{hit.instance_id or '-':<21} {hit.status:<17} {impact.get('verdict') or '-':<13} "
            f"{_outcome(impact):<10} {work}"
        )
        if impact.get("reasons"):
            lines.append(f"{'':<14} └ {_first_reason(impact)}")
    return "\n".join(lines) if hits else "no job was hit"


def _jobs_judged(entry: LedgerEntry) -> str:
    """The impacted jobs, each with its verdict when the head node gave one."""
    jobs = [
        f"{job.get('job_id')}" + (f" ({job['verdict']})" if job.get("verdict") else "")
        for job in entry.impacted_jobs
    ]
    return ", ".join(jobs) or "-"


def _first_reason(job: dict[str, Any], chars: int = 160) -> str:
    reasons = job.get("reasons") or []
    if not reasons:
        return "no reason given"
    first = str(reasons[0])
    more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
    return (first if len(first) <= chars else first[: chars - 1] + "…") + more


def _replacement(request: dict[str, Any]) -> str:
    status = request.get("status", "?")
    if request.get("node_type"):
        return f"{status}: {request['node_type']} ({request.get('market')})"
    return f"{status}: {request.get('reason', '')}"[:160]


def _kind(entry: LedgerEntry) -> str:
    return f"{entry.kind}:{entry.detail}" if entry.detail else entry.kind


def _jobs(entry: LedgerEntry) -> str:
    return ",".join(str(j.get("job_id")) for j in entry.impacted_jobs) or "-"


def _clock(moment: str | None) -> str:
    return "-" if not moment else moment[11:23]
