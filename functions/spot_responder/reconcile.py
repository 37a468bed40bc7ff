"""Release the replacement capacity that is no longer needed, on every served cluster, and
check the verdicts of the notices whose node is gone.

Each Ray head keeps its outstanding capacity requests with an expiry; `reconcile` on
the head drops those whose replacement joined or that expired, and reports what really
happened to the jobs it judged (`verdict_outcomes`), which is written into the ledger next to
each verdict. This runs it on every cluster that has a running head node, one cluster's
failure not stopping the others.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

from spot_responder.budget import Budget, applied
from spot_responder.channel import ChannelUnavailable, ClusterChannel, ClusterRefused
from spot_responder.ledger import Ledger, LedgerUnavailable
from spot_responder.settings import Settings

MAX_PARALLEL = 32


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
    budget: Budget | None = None,
    ledger: Ledger | None = None,
) -> ReconcileReport:
    """Every served cluster at once, none waited for past `budget` (the Lambda's time)."""
    served = [c for c in sorted(set(clusters)) if settings.allows_cluster(c)]
    budget = budget or Budget.unlimited()
    report = ReconcileReport()
    if not served:
        return report
    pool = ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(served)))
    try:
        futures = {
            cluster: pool.submit(
                contextvars.copy_context().run, _reconcile_within, budget, channel, cluster
            )
            for cluster in served
        }
        remaining = budget.remaining_s()
        wait(futures.values(), timeout=None if remaining == float("inf") else remaining + 0.5)
        for cluster, future in futures.items():
            if future.done():  # the ledger is written here, in one thread
                error = future.exception()
                if error is not None and not isinstance(error, Exception):
                    raise error  # KeyboardInterrupt, SystemExit: the invocation's end
                answer = future.result() if error is None else error
                report.clusters.append(_reconciled(cluster, answer, ledger))
            else:
                late = "no answer from the head node within the invocation's time budget"
                report.clusters.append(ClusterReconciled(cluster, error=late))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return report


def _reconcile_within(
    budget: Budget, channel: ClusterChannel, cluster: str
) -> dict[str, Any] | Exception:
    with applied(budget):
        try:
            return channel.call(cluster, reconcile_request(cluster))
        except (ChannelUnavailable, ClusterRefused) as exc:
            return exc


def _reconciled(
    cluster: str, answer: dict[str, Any] | Exception, ledger: Ledger | None
) -> ClusterReconciled:
    if isinstance(answer, Exception):
        return ClusterReconciled(cluster, error=str(answer))
    return ClusterReconciled(
        cluster,
        released=len(answer.get("released") or ()),
        outstanding=len(answer.get("outstanding") or ()),
        outcomes=record_verdict_outcomes(answer, ledger),
        error=str(answer["error"]) if "error" in answer else None,
    )
