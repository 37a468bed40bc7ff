"""Release the replacement capacity that is no longer needed, on every served cluster.

Each Ray head keeps its outstanding capacity requests with an expiry; `reconcile` on
the head drops those whose replacement joined or that expired. This runs it on every
cluster that has a running head node, one cluster's failure not stopping the others.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from spot_responder.budget import Budget, applied
from spot_responder.channel import ChannelUnavailable, ClusterChannel, ClusterRefused
from spot_responder.settings import Settings

MAX_PARALLEL = 32


@dataclass(frozen=True)
class ClusterReconciled:
    cluster: str
    released: int = 0
    outstanding: int = 0
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


def reconcile(
    clusters: Iterable[str],
    channel: ClusterChannel,
    settings: Settings,
    budget: Budget | None = None,
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
            if future.done():
                report.clusters.append(future.result())
            else:
                late = "no answer from the head node within the invocation's time budget"
                report.clusters.append(ClusterReconciled(cluster, error=late))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return report


def _reconcile_within(budget: Budget, channel: ClusterChannel, cluster: str) -> ClusterReconciled:
    with applied(budget):
        try:
            answer = channel.call(cluster, reconcile_request(cluster))
        except (ChannelUnavailable, ClusterRefused) as exc:
            return ClusterReconciled(cluster, error=str(exc))
    return ClusterReconciled(
        cluster,
        released=len(answer.get("released") or ()),
        outstanding=len(answer.get("outstanding") or ()),
        error=str(answer["error"]) if "error" in answer else None,
    )
