"""What to do about one notice: a pure function of the notice, the instance and history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from spot_responder.instances import Instance
from spot_responder.notices import Notice, NoticeKind
from spot_responder.settings import RebalanceAction, Settings

STOPPING_STATES = frozenset({"stopping", "shutting-down"})
# What EC2 says of an instance that really is going away.
GONE_OR_GOING = frozenset({"stopping", "stopped", "shutting-down", "terminated"})
# StateReason codes of a stop or termination someone asked for: `ray down`, the autoscaler
# scaling down (TerminateInstances), a user's StopInstances, `shutdown -h` on the node.
ROUTINE_REASONS = frozenset(
    {
        "Client.UserInitiatedShutdown",
        "Client.InstanceInitiatedShutdown",
        "Client.UserInitiatedHibernate",
    }
)
# A scheduled change is drained this long before it starts; one further ahead is recorded
# (the drain would take the node out of service for the whole wait).
SCHEDULED_DRAIN_LEAD = timedelta(minutes=15)
# The notice is brought back a minute inside that lead, so that it drains when it comes.
REARM_AT_LEAD = SCHEDULED_DRAIN_LEAD - timedelta(minutes=1)


class Action(StrEnum):
    DRAIN = "drain"
    """Drain the Ray node with a deadline, then record the impacted jobs."""
    ANALYSE = "analyse"
    """Record the impacted jobs without draining."""
    ALERT = "alert"
    """Tell people loudly; touch nothing (a head node)."""
    RECORD = "record"
    """Write it down; nothing to do in the cluster."""
    SCHEDULE = "schedule"
    """Write it down and bring the notice back at `rearm_at` (a change far ahead)."""
    IGNORE = "ignore"
    """Not ours (not a Ray node, cluster not served)."""


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    drain_deadline: datetime | None = None
    replace: bool = False
    """Ask the Ray autoscaler for the node's capacity elsewhere before it is gone."""
    rearm_at: datetime | None = None
    """For SCHEDULE: when the notice is to come back and be drained."""

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
    untrue = _contradicted_by_ec2(notice, instance)
    if untrue is not None and not instance.is_head:
        return Decision(Action.RECORD, untrue)
    routine = _routine_stop(notice, instance)
    if routine is not None:
        return Decision(Action.RECORD, routine)
    if instance.is_head:
        if notice.kind is NoticeKind.STATE_CHANGE and notice.detail == "running":
            return Decision(Action.RECORD, "head node is running")
        return Decision(
            Action.ALERT, f"{notice.kind} for the HEAD node of {instance.cluster}: never drained"
        )
    return _decide_for_worker(notice, settings, warned=warned, now=now)


def _contradicted_by_ec2(notice: Notice, instance: Instance) -> str | None:
    """Why EC2's own record of the instance says the notice cannot be true, if it does.

    A spot warning only comes for a spot instance, a Capacity Reservation warning only for
    an instance in a reservation, and a stop or termination is one EC2 reports too. A fact
    the directory does not know (None: a local cluster has no EC2) contradicts nothing.
    A head is never acted on whatever the notice: its notices are alerted regardless.
    """
    if notice.kind is NoticeKind.SPOT_INTERRUPTION and instance.lifecycle not in (None, "spot"):
        return (
            f"spot interruption warning for a {instance.lifecycle or 'non-spot'} instance: "
            "EC2 sends none for it (forged or misrouted); not acted on"
        )
    if (
        notice.kind is NoticeKind.CAPACITY_RESERVATION_INTERRUPTION
        and not instance.capacity_reservation_id
    ):
        return (
            "Capacity Reservation interruption warning for an instance in no Capacity "
            "Reservation (forged or misrouted); not acted on"
        )
    if (
        notice.kind is NoticeKind.STATE_CHANGE
        and notice.detail in STOPPING_STATES
        and instance.state is not None
        and instance.state not in GONE_OR_GOING
    ):
        return (
            f"instance {notice.detail} per the event, but EC2 says {instance.state}; not acted on"
        )
    return None


def _routine_stop(notice: Notice, instance: Instance) -> str | None:
    """Why a stop or termination is routine (asked for, not an interruption), if it is."""
    if notice.kind is not NoticeKind.STATE_CHANGE or notice.detail == "running":
        return None
    if instance.state_reason in ROUTINE_REASONS:
        who = (
            "the node itself"
            if "InstanceInitiated" in instance.state_reason
            else "a user or the autoscaler"
        )
        return (
            f"instance {notice.detail}, asked for by {who} ({instance.state_reason}): "
            "not an interruption"
        )
    return None


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
    if notice.kind is NoticeKind.CAPACITY_RESERVATION_INTERRUPTION:
        return Decision(
            Action.DRAIN,
            f"Capacity Reservation interruption ({notice.detail})",
            _deadline(notice.termination_time, margin),
            replace=True,
        )
    if notice.kind is NoticeKind.SCHEDULED_CHANGE:
        start = notice.termination_time
        if start is not None and start - now > SCHEDULED_DRAIN_LEAD:
            return Decision(
                Action.SCHEDULE,
                f"scheduled change {notice.detail} starts {start.isoformat()}, more than "
                f"{SCHEDULED_DRAIN_LEAD.total_seconds() / 60:.0f} min ahead: not drained yet",
                rearm_at=start - REARM_AT_LEAD,
            )
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
