"""Every kind of event the rules deliver parses into one normalized Notice."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from spot_responder.notices import NoticeKind, NoticeRejected, parse_event
from tests.support import ARM_WORKER, EVENTS, X86_WORKER, load_event


@pytest.mark.parametrize(
    ("name", "kind", "instance", "detail"),
    [
        ("spot-interruption-terminate.json", NoticeKind.SPOT_INTERRUPTION, X86_WORKER, "terminate"),
        ("spot-interruption-stop.json", NoticeKind.SPOT_INTERRUPTION, ARM_WORKER, "stop"),
        ("spot-interruption-hibernate.json", NoticeKind.SPOT_INTERRUPTION, ARM_WORKER, "hibernate"),
        (
            "rebalance-recommendation.json",
            NoticeKind.REBALANCE_RECOMMENDATION,
            ARM_WORKER,
            "rebalance",
        ),
        ("state-change-stopping.json", NoticeKind.STATE_CHANGE, ARM_WORKER, "stopping"),
        ("state-change-shutting-down.json", NoticeKind.STATE_CHANGE, X86_WORKER, "shutting-down"),
        ("state-change-terminated.json", NoticeKind.STATE_CHANGE, X86_WORKER, "terminated"),
        (
            "health-scheduled-retirement.json",
            NoticeKind.SCHEDULED_CHANGE,
            X86_WORKER,
            "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED",
        ),
    ],
)
def test_sample_event_parses_into_one_notice(name, kind, instance, detail):
    (notice,) = parse_event(json.dumps(load_event(name)))

    assert (notice.kind, notice.instance_id, notice.detail) == (kind, instance, detail)
    assert notice.event_id == load_event(name)["id"]


def test_spot_warning_terminates_two_minutes_after_the_event_time():
    (notice,) = parse_event(load_event("spot-interruption-terminate.json"))

    assert notice.time == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert notice.termination_time == notice.time + timedelta(minutes=2)


def test_health_event_uses_its_start_time_as_the_termination_time():
    (notice,) = parse_event(load_event("health-scheduled-retirement.json"))

    assert notice.termination_time == datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_sqs_batch_sample_wraps_the_warning_as_the_lambda_receives_it():
    batch = json.loads((EVENTS / "sqs-batch-spot-interruption.json").read_text())

    (notice,) = parse_event(batch["Records"][0]["body"])

    assert notice.kind is NoticeKind.SPOT_INTERRUPTION


def test_same_instance_and_kind_share_a_key_whatever_the_event_id():
    first = load_event("spot-interruption-terminate.json")
    second = {**first, "id": "another-event-id"}

    assert parse_event(first)[0].key == parse_event(second)[0].key


def test_state_changes_of_different_states_have_different_keys():
    stopping = parse_event(load_event("state-change-stopping.json"))[0]
    terminated = parse_event(load_event("state-change-terminated.json"))[0]

    assert stopping.key.endswith("state-change:stopping")
    assert terminated.key.endswith("state-change:terminated")


def test_unknown_kind_is_not_an_error_and_yields_no_notice():
    event = {**load_event("spot-interruption-terminate.json"), "detail-type": "Something Else"}

    assert parse_event(event) == []


def test_health_event_for_another_service_yields_no_notice():
    event = load_event("health-scheduled-retirement.json")
    event["detail"]["service"] = "RDS"

    assert parse_event(event) == []


def test_retimed_notice_keeps_its_two_minute_window_from_now():
    (notice,) = parse_event(load_event("spot-interruption-terminate.json"))
    now = datetime(2027, 1, 1, tzinfo=UTC)

    moved = notice.retimed(now)

    assert moved.time == now
    assert moved.termination_time == now + timedelta(minutes=2)


@pytest.mark.parametrize(
    ("mutate", "says"),
    [
        (lambda e: e["detail"].update({"instance-id": "i-XYZ; rm -rf /"}), "detail.instance-id"),
        (lambda e: e["detail"].pop("instance-id"), "detail.instance-id"),
        (lambda e: e["detail"].update({"instance-action": "explode"}), "instance-action"),
        (lambda e: e.pop("time"), "time"),
        (lambda e: e.update({"detail": "not an object"}), "detail"),
    ],
)
def test_broken_event_is_rejected_with_a_one_line_reason(mutate, says):
    event = load_event("spot-interruption-terminate.json")
    mutate(event)

    with pytest.raises(NoticeRejected) as caught:
        parse_event(json.dumps(event))

    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("body", ["{", "[]", "null", "", '"text"'])
def test_body_that_is_not_an_event_object_is_rejected(body):
    with pytest.raises(NoticeRejected) as caught:
        parse_event(body)

    assert "\n" not in str(caught.value)


def test_oversized_event_is_rejected_before_parsing():
    with pytest.raises(NoticeRejected, match="more than"):
        parse_event("{" + " " * (300 * 1024) + "}")
