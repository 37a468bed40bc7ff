"""What to do about one notice: a pure function of the notice, the instance and history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from spot_responder.instances import Instance
from spot_responder.notices import Notice, NoticeKind
from spot_responder.settings import RebalanceAction, Settings

STOPPING_STATES = frozenset({"stopping", "shutting-down"})


class Action(StrEnum):
    DRAIN = "drain"
    """Drain the Ray node with a deadline, then record the impacted jobs."""
    ANALYSE = "analyse"
    """Record the impacted jobs without draining."""
    ALERT = "alert"
    """Tell people loudly; touch nothing (a head node)."""
    RECORD = "record"
    """Write it down; nothing to do in the cluster."""
    IGNORE = "ignore"
    """Not ours (not a Ray node, cluster not served)."""


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    drain_deadline: datetime | None = None
    replace: bool = False
    """Ask the Ray autoscaler for the node's capacity elsewhere before it is gone."""

    @property
    def needs_cluster(self) -> bool:
        return self.action in {Action.DRAIN, Action.ANALYSE}


def decide(
    notice: Notice,
    instance: Instance | None,
    settings: Settings,
    *,
    warned: bool,
    now: datetime,
) -> Decision:
    """Decide for one notice. `warned`: a warning for this instance was already acted on."""
    if instance is None:
        return Decision(Action.IGNORE, "instance not found (not in EC2, or no Ray node has its id)")
    if not instance.is_ray_node or instance.cluster is None:
        return Decision(Action.IGNORE, "not a Ray node (no ray-cluster-name/ray-node-type tags)")
    if not settings.allows_cluster(instance.cluster):
        return Decision(Action.IGNORE, f"cluster {instance.cluster!r} is not in the allowlist")
    if instance.is_head:
        if notice.kind is NoticeKind.STATE_CHANGE and notice.detail == "running":
            return Decision(Action.RECORD, "head node is running")
        return Decision(
            Action.ALERT, f"{notice.kind} for the HEAD node of {instance.cluster}: never drained"
        )
    return _decide_for_worker(notice, settings, warned=warned, now=now)


def _decide_for_worker(
    notice: Notice, settings: Settings, *, warned: bool, now: datetime
) -> Decision:
    margin = timedelta(seconds=settings.safety_margin_s)
    if notice.kind is NoticeKind.SPOT_INTERRUPTION:
        return Decision(
            Action.DRAIN,
            f"spot interruption ({notice.detail})",
            _deadline(notice.termination_time, margin),
            replace=True,
        )
    if notice.kind is NoticeKind.SCHEDULED_CHANGE:
        return Decision(
            Action.DRAIN,
            f"scheduled change {notice.detail}",
            _deadline(notice.termination_time, margin),
            replace=True,
        )
    if notice.kind is NoticeKind.REBALANCE_RECOMMENDATION:
        return _decide_rebalance(settings, warned=warned)
    # State changes close the loop; a stop without any warning is drained at once.
    if notice.detail in STOPPING_STATES:
        if warned:
            return Decision(Action.RECORD, f"instance {notice.detail}; already drained on warning")
        return Decision(
            Action.DRAIN, f"instance {notice.detail} without a warning", now, replace=True
        )
    return Decision(Action.RECORD, f"instance {notice.detail}")


def _decide_rebalance(settings: Settings, *, warned: bool) -> Decision:
    if warned:
        return Decision(Action.RECORD, "rebalance recommendation after a warning: already handled")
    if settings.rebalance_action is RebalanceAction.IGNORE:
        return Decision(Action.RECORD, "rebalance recommendation (configured to ignore)")
    if settings.rebalance_action is RebalanceAction.DRAIN:
        return Decision(
            Action.DRAIN, "rebalance recommendation (configured to drain)", replace=True
        )
    return Decision(
        Action.ANALYSE, "rebalance recommendation: replacement asked for, node kept", replace=True
    )


def _deadline(termination: datetime | None, margin: timedelta) -> datetime | None:
    """The termination time less the margin, even when it has passed: Ray books a death as a
    preemption only after the deadline, so a late notice keeps its real, past, deadline."""
    if termination is None:
        return None
    return termination - margin
