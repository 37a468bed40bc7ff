"""The pure decision: what to do about one notice."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from spot_responder.instances import Instance
from spot_responder.notices import parse_event
from spot_responder.policy import Action, decide
from spot_responder.settings import RebalanceAction, Settings
from tests.support import HEAD, NOT_RAY, X86_WORKER, load_event, ray_instance

NOW = datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC)


def notice(name):
    return parse_event(load_event(name))[0]


def test_spot_warning_for_a_worker_drains_a_safety_margin_before_termination():
    decision = decide(
        notice("spot-interruption-terminate.json"),
        ray_instance(X86_WORKER),
        Settings(safety_margin_s=20),
        warned=False,
        now=NOW,
    )

    assert decision.action is Action.DRAIN
    assert decision.drain_deadline == datetime(2026, 11, 22, 10, 1, 40, tzinfo=UTC)


def test_late_warning_still_drains_with_its_real_deadline_already_past():
    decision = decide(
        notice("spot-interruption-terminate.json"),
        ray_instance(X86_WORKER),
        Settings(safety_margin_s=20),
        warned=False,
        now=NOW + timedelta(minutes=10),
    )

    assert decision.action is Action.DRAIN
    assert decision.drain_deadline == datetime(2026, 11, 22, 10, 1, 40, tzinfo=UTC)


def test_warning_for_head_node_alerts_and_never_drains():
    decision = decide(
        notice("spot-interruption-head-node.json"),
        replace(ray_instance(HEAD, kind="head"), lifecycle="spot"),
        Settings(),
        warned=False,
        now=NOW,
    )

    assert decision.action is Action.ALERT
    assert "HEAD" in decision.reason


def test_instance_without_ray_tags_is_ignored():
    decision = decide(
        notice("spot-interruption-not-ray.json"),
        Instance(NOT_RAY, lifecycle="spot"),
        Settings(),
        warned=False,
        now=NOW,
    )

    assert decision.action is Action.IGNORE
    assert "not a Ray node" in decision.reason


def test_unknown_instance_is_ignored():
    decision = decide(
        notice("spot-interruption-not-ray.json"), None, Settings(), warned=False, now=NOW
    )

    assert decision.action is Action.IGNORE


def test_cluster_outside_the_allowlist_is_ignored():
    decision = decide(
        notice("spot-interruption-terminate.json"),
        ray_instance(X86_WORKER, cluster="other"),
        Settings(cluster_allowlist=frozenset({"ray-on-aws"})),
        warned=False,
        now=NOW,
    )

    assert decision.action is Action.IGNORE


def test_shutting_down_without_a_warning_drains_at_once():
    decision = decide(
        notice("state-change-shutting-down.json"),
        reclaimed(ray_instance(X86_WORKER)),
        Settings(),
        warned=False,
        now=NOW,
    )

    assert decision.action is Action.DRAIN
    assert decision.drain_deadline == NOW


def test_shutting_down_after_a_warning_is_only_recorded():
    decision = decide(
        notice("state-change-shutting-down.json"),
        ray_instance(X86_WORKER),
        Settings(),
        warned=True,
        now=NOW,
    )

    assert decision.action is Action.RECORD


def test_terminated_and_running_are_recorded():
    for name in ("state-change-terminated.json", "state-change-running.json"):
        decision = decide(notice(name), ray_instance(X86_WORKER), Settings(), warned=False, now=NOW)
        assert decision.action is Action.RECORD


def test_rebalance_follows_the_configured_action():
    rebalance = notice("rebalance-recommendation.json")
    worker = ray_instance(X86_WORKER)
    actions = {
        configured: decide(
            rebalance, worker, Settings(rebalance_action=configured), warned=False, now=NOW
        ).action
        for configured in RebalanceAction
    }

    assert actions == {
        RebalanceAction.REPLACE: Action.ANALYSE,
        RebalanceAction.DRAIN: Action.DRAIN,
        RebalanceAction.IGNORE: Action.RECORD,
    }


def test_scheduled_change_drains_with_the_start_time_as_deadline():
    decision = decide(
        notice("health-scheduled-retirement.json"),
        ray_instance(X86_WORKER),
        Settings(safety_margin_s=0),
        warned=False,
        now=datetime(2026, 11, 22, 11, 50, tzinfo=UTC),
    )

    assert decision.action is Action.DRAIN
    assert decision.drain_deadline == datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def reclaimed(instance):
    """The instance as EC2 describes it while a spot reclaim takes it down."""
    return replace(instance, state="shutting-down", state_reason="Server.SpotInstanceTermination")


def test_scheduled_change_hours_ahead_is_not_drained_yet_but_brought_back_near_its_start():
    # the retirement starts at 12:00; NOW is 10:00
    retirement = notice("health-scheduled-retirement.json")
    decision = decide(retirement, ray_instance(X86_WORKER), Settings(), warned=False, now=NOW)

    assert decision.action is Action.SCHEDULE
    assert "not drained yet" in decision.reason
    assert not decision.needs_cluster
    assert decision.rearm_at == datetime(2026, 11, 22, 11, 46, tzinfo=UTC)

    # brought back then, the same notice drains, with the start as Ray's deadline
    assert decision.rearm_at is not None
    again = decide(
        retirement, ray_instance(X86_WORKER), Settings(), warned=False, now=decision.rearm_at
    )
    assert again.action is Action.DRAIN
    assert again.drain_deadline is not None
    assert again.drain_deadline <= datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_spot_warning_for_an_on_demand_instance_is_recorded_not_drained():
    decision = decide(
        notice("spot-interruption-terminate.json"),
        replace(ray_instance(X86_WORKER), lifecycle="on-demand"),
        Settings(),
        warned=False,
        now=NOW,
    )

    assert decision.action is Action.RECORD
    assert "on-demand instance" in decision.reason
    assert not decision.needs_cluster


def test_spot_warning_for_an_on_demand_head_is_alerted_all_the_same_and_never_drained():
    # a head is never acted on; people hear of any notice for it, forged or not
    decision = decide(
        notice("spot-interruption-head-node.json"),
        ray_instance(HEAD, kind="head"),
        Settings(),
        warned=False,
        now=NOW,
    )

    assert decision.action is Action.ALERT
    assert not decision.needs_cluster


def test_shutting_down_without_ec2_facts_is_taken_at_its_word():
    # a local cluster's directory knows no EC2 state
    decision = decide(
        notice("state-change-shutting-down.json"),
        replace(ray_instance(X86_WORKER), state=None),
        Settings(),
        warned=False,
        now=NOW,
    )

    assert decision.action is Action.DRAIN


@pytest.mark.parametrize(
    ("reason", "who"),
    [
        ("Client.UserInitiatedShutdown", "a user or the autoscaler"),
        ("Client.InstanceInitiatedShutdown", "the node itself"),
    ],
)
@pytest.mark.parametrize("kind", ["worker", "head"])
def test_a_stop_someone_asked_for_is_recorded_not_drained_or_alerted(reason, who, kind):
    instance_id = X86_WORKER if kind == "worker" else HEAD
    instance = replace(
        ray_instance(instance_id, kind=kind), state="shutting-down", state_reason=reason
    )
    event = load_event("state-change-shutting-down.json")
    event["detail"]["instance-id"] = instance_id

    decision = decide(parse_event(event)[0], instance, Settings(), warned=False, now=NOW)

    assert decision.action is Action.RECORD
    assert reason in decision.reason
    assert who in decision.reason


def test_shutting_down_event_for_an_instance_ec2_says_is_running_is_not_drained():
    decision = decide(
        notice("state-change-shutting-down.json"),
        ray_instance(X86_WORKER),  # EC2: running
        Settings(),
        warned=False,
        now=NOW,
    )

    assert decision.action is Action.RECORD
    assert "EC2 says running" in decision.reason


def test_scheduled_stop_of_the_head_is_alerted():
    instance = replace(
        ray_instance(HEAD, kind="head"), state="stopping", state_reason="Server.ScheduledStop"
    )
    event = load_event("state-change-stopping.json")
    event["detail"]["instance-id"] = HEAD

    decision = decide(parse_event(event)[0], instance, Settings(), warned=False, now=NOW)

    assert decision.action is Action.ALERT


def test_capacity_reservation_warning_drains_by_its_own_termination_time():
    instance = replace(
        ray_instance(X86_WORKER), lifecycle="on-demand", capacity_reservation_id="cr-0123"
    )
    decision = decide(
        notice("capacity-reservation-interruption.json"),
        instance,
        Settings(safety_margin_s=15),
        warned=False,
        now=NOW,
    )

    assert decision.action is Action.DRAIN
    assert decision.replace
    assert decision.drain_deadline == datetime(2026, 11, 22, 10, 1, 45, tzinfo=UTC)


def test_capacity_reservation_warning_for_an_instance_in_no_reservation_is_not_drained():
    decision = decide(
        notice("capacity-reservation-interruption.json"),
        ray_instance(X86_WORKER),
        Settings(),
        warned=False,
        now=NOW,
    )

    assert decision.action is Action.RECORD
