"""Release the replacement capacity that is no longer needed, on every served cluster.

Each Ray head keeps its outstanding capacity requests with an expiry; `reconcile` on
the head drops those whose replacement joined or that expired. This runs it on every
cluster that has a running head node, one cluster's failure not stopping the others.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from spot_responder.channel import ChannelUnavailable, ClusterChannel, ClusterRefused
from spot_responder.settings import Settings


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
    clusters: Iterable[str], channel: ClusterChannel, settings: Settings
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
                error=str(answer["error"]) if "error" in answer else None,
            )
        )
    return report
