"""The pure decision: what to do about one notice."""

from datetime import UTC, datetime, timedelta

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
        ray_instance(HEAD, kind="head"),
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
        ray_instance(X86_WORKER),
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
        now=NOW,
    )

    assert decision.action is Action.DRAIN
    assert decision.drain_deadline == datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
