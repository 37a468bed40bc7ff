"""Release the replacement capacity that is no longer needed, on every served cluster, and
check the verdicts of the notices whose node is gone.

Each Ray head keeps its outstanding capacity requests with an expiry; `reconcile` on
the head drops those whose replacement joined or that expired, and reports what really
happened to the jobs it judged (`verdict_outcomes`), which is written into the ledger next to
each verdict. This runs it on every
cluster that has a running head node, one cluster's failure not stopping the others.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from spot_responder.channel import ChannelUnavailable, ClusterChannel, ClusterRefused
from spot_responder.ledger import Ledger, LedgerUnavailable
from spot_responder.settings import Settings


@dataclass(frozen=True)
class ClusterReconciled:
    cluster: str
    released: int = 0
    outstanding: int = 0
    outcomes: int = 0
    """Judged jobs whose real outcome was written next to their verdict."""
    error: str | None = None


@dataclass
class ReconcileReport:
    clusters: list[ClusterReconciled] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return sum(1 for c in self.clusters if c.error)


def reconcile_request(cluster: str) -> dict[str, Any]:
    return {
        "version": 1,
        "operation": "reconcile",
        "cluster": cluster,
        "request_id": f"rec-{uuid.uuid4().hex[:12]}",
    }


def record_verdict_outcomes(answer: dict[str, Any], ledger: Ledger | None) -> int:
    """Write what really happened to each judged job next to its verdict, in the entry of
    the notice that judged it (and so in the ledger's per-job view); how many were written.

    An entry that is gone, or a ledger that does not answer, loses only this check."""
    outcomes = [o for o in answer.get("verdict_outcomes") or () if isinstance(o, dict)]
    if ledger is None or not outcomes:
        return 0
    by_notice: dict[str, dict[str, dict[str, Any]]] = {}
    for outcome in outcomes:
        by_notice.setdefault(str(outcome.get("notice_id")), {})[str(outcome.get("job_id"))] = {
            "outcome": outcome.get("outcome"),
            "node_death": outcome.get("node_death"),
            "details": list(outcome.get("details") or ())[:10],
        }
    written = 0
    for notice_id, jobs in by_notice.items():
        try:
            entry = ledger.get(notice_id)
            if entry is None:
                continue
            impacted = tuple(
                {**job, "outcome": jobs[str(job.get("job_id"))]}
                if str(job.get("job_id")) in jobs
                else job
                for job in entry.impacted_jobs
            )
            ledger.save(replace(entry, impacted_jobs=impacted))
            written += sum(1 for job in entry.impacted_jobs if str(job.get("job_id")) in jobs)
        except LedgerUnavailable:
            continue
    return written


def reconcile(
    clusters: Iterable[str],
    channel: ClusterChannel,
    settings: Settings,
    ledger: Ledger | None = None,
) -> ReconcileReport:
    report = ReconcileReport()
    for cluster in sorted(set(clusters)):
        if not settings.allows_cluster(cluster):
            continue
        try:
            answer = channel.call(cluster, reconcile_request(cluster))
        except (ChannelUnavailable, ClusterRefused) as exc:
            report.clusters.append(ClusterReconciled(cluster, error=str(exc)))
            continue
        report.clusters.append(
            ClusterReconciled(
                cluster,
                released=len(answer.get("released") or ()),
                outstanding=len(answer.get("outstanding") or ()),
                outcomes=record_verdict_outcomes(answer, ledger),
                error=str(answer["error"]) if "error" in answer else None,
            )
        )
    return report
