"""The EventBridge rules of template.yaml against the sample events, delivered for real:
moto's EventBridge into moto's SQS, over HTTP. The kinds the system handles reach the
notice queue exactly once; other events do not reach it at all."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests import cfn
from tests.aws import Aws, moto_server
from tests.support import EVENTS, load_event

pytestmark = pytest.mark.aws

# Every EventBridge event in events/ is a kind the responder handles, routed by this rule.
HANDLED = {
    "spot-interruption-terminate.json": "SpotInterruptionRule",
    "spot-interruption-stop.json": "SpotInterruptionRule",
    "spot-interruption-hibernate.json": "SpotInterruptionRule",
    "spot-interruption-head-node.json": "SpotInterruptionRule",
    "spot-interruption-not-ray.json": "SpotInterruptionRule",
    "capacity-reservation-interruption.json": "CapacityReservationInterruptionRule",
    "rebalance-recommendation.json": "RebalanceRecommendationRule",
    "state-change-running.json": "InstanceStateChangeRule",
    "state-change-stopping.json": "InstanceStateChangeRule",
    "state-change-shutting-down.json": "InstanceStateChangeRule",
    "state-change-terminated.json": "InstanceStateChangeRule",
    "health-scheduled-retirement.json": "HealthScheduledChangeRule",
}
# Not EventBridge events: what Lambda receives from SQS.
NOT_EVENTS = {"sqs-batch-spot-interruption.json"}


def _variant(name: str, detail: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A sample event with some fields changed (detail_type stands for detail-type)."""
    event = copy.deepcopy(load_event(name))
    event.update({key.replace("_", "-"): value for key, value in fields.items()})
    event["detail"].update(detail or {})
    return event


# Events that look close to handled ones but must not reach the queue.
IGNORED = {
    "state pending (a launch, nothing to do yet)": _variant(
        "state-change-running.json", detail={"state": "pending"}
    ),
    "state stopped (already handled at stopping)": _variant(
        "state-change-stopping.json", detail={"state": "stopped"}
    ),
    "health issue, not a scheduled change": _variant(
        "health-scheduled-retirement.json", detail={"eventTypeCategory": "issue"}
    ),
    "health scheduled change that leaves the instance up": _variant(
        "health-scheduled-retirement.json",
        detail={"eventTypeCode": "AWS_EC2_DEDICATED_HOST_NETWORK_MAINTENANCE_SCHEDULED"},
    ),
    "health scheduled change of another service": _variant(
        "health-scheduled-retirement.json", detail={"service": "RDS"}
    ),
    "spot request fulfillment": _variant(
        "spot-interruption-terminate.json", detail_type="EC2 Spot Instance Request Fulfillment"
    ),
    "same detail-type from another source": _variant(
        "spot-interruption-terminate.json", source="my.app"
    ),
}


# moto's account: what `!Ref AWS::AccountId` is in the rules, and the `account` moto gives
# every event put on its bus.
MOTO_ACCOUNT = "123456789012"


def _resolved(pattern: Any) -> Any:
    """The event pattern as CloudFormation deploys it (only AWS::AccountId is referenced)."""
    if pattern == {"Ref": "AWS::AccountId"}:
        return MOTO_ACCOUNT
    if isinstance(pattern, dict):
        return {k: _resolved(v) for k, v in pattern.items()}
    if isinstance(pattern, list):
        return [_resolved(v) for v in pattern]
    return pattern


def sample_events() -> list[str]:
    return sorted(p.name for p in EVENTS.glob("*.json") if p.name not in NOT_EVENTS)


class NoticeRouting:
    """The rules and the queue of template.yaml, created in moto as the template declares."""

    def __init__(self, aws: Aws) -> None:
        self.sqs = aws.client("sqs")
        self.events = aws.client("events")
        dlq_props = cfn.resource("NoticeDeadLetterQueue")["Properties"]
        dlq = self.sqs.create_queue(
            QueueName="notices-dlq",
            Attributes={"MessageRetentionPeriod": str(dlq_props["MessageRetentionPeriod"])},
        )["QueueUrl"]
        self.dlq_arn = self._arn(dlq)
        props = cfn.resource("NoticeQueue")["Properties"]
        redrive = props["RedrivePolicy"]
        assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["NoticeDeadLetterQueue", "Arn"]}
        self.queue_url = self.sqs.create_queue(
            QueueName="notices",
            Attributes={
                "VisibilityTimeout": str(props["VisibilityTimeout"]),
                "MessageRetentionPeriod": str(props["MessageRetentionPeriod"]),
                "RedrivePolicy": json.dumps(
                    {
                        "deadLetterTargetArn": self.dlq_arn,
                        "maxReceiveCount": redrive["maxReceiveCount"],
                    }
                ),
            },
        )["QueueUrl"]
        self.queue_arn = self._arn(self.queue_url)
        self.rules = cfn.resources_of_type("AWS::Events::Rule")
        # Each rule also feeds a witness queue of its own, so a test can tell which rule
        # delivered an event (moto does not implement TestEventPattern).
        self.witnesses: dict[str, str] = {}
        for name, rule in self.rules.items():
            (target,) = rule["Properties"]["Targets"]
            assert target["Arn"] == {"Fn::GetAtt": ["NoticeQueue", "Arn"]}
            self.witnesses[name] = self.sqs.create_queue(QueueName=f"witness-{name}")["QueueUrl"]
            self.events.put_rule(
                Name=name,
                EventPattern=json.dumps(_resolved(rule["Properties"]["EventPattern"])),
                State="ENABLED",
                Description=rule["Properties"]["Description"],
            )
            self.events.put_targets(
                Rule=name,
                Targets=[
                    {"Id": target["Id"], "Arn": self.queue_arn},
                    {"Id": "witness", "Arn": self._arn(self.witnesses[name])},
                ],
            )

    def _arn(self, url: str) -> str:
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return str(attrs["Attributes"]["QueueArn"])

    def publish(self, event: dict[str, Any]) -> None:
        """PutEvents with the event's own fields, as AWS would emit it."""
        answer = self.events.put_events(
            Entries=[
                {
                    "Source": event["source"],
                    "DetailType": event["detail-type"],
                    "Detail": json.dumps(event["detail"]),
                    "Resources": event["resources"],
                    "Time": datetime.fromisoformat(event["time"].replace("Z", "+00:00")),
                }
            ]
        )
        assert answer["FailedEntryCount"] == 0

    def drain(self, queue_url: str | None = None) -> list[dict[str, Any]]:
        """Every message on the notice queue (or the given one), removed."""
        url = queue_url or self.queue_url
        bodies: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", [])
            if not got:
                return bodies
            for message in got:
                bodies.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    def rules_that_delivered(self) -> list[str]:
        """Names of the rules that delivered something since the last call."""
        return sorted(name for name, url in self.witnesses.items() if self.drain(url))


@pytest.fixture(scope="module")
def routing() -> Iterator[NoticeRouting]:
    with moto_server() as endpoint:
        yield NoticeRouting(Aws(endpoint))


@pytest.fixture(autouse=True)
def empty_queues(routing: NoticeRouting) -> None:
    routing.drain()
    routing.rules_that_delivered()


def test_every_sample_event_is_classified_here():
    assert set(sample_events()) == set(HANDLED)


@pytest.mark.parametrize("name", sample_events())
def test_handled_event_reaches_the_notice_queue_exactly_once(routing, name):
    # GIVEN the sample event as EC2 / AWS Health emit it
    event = load_event(name)
    # WHEN it is put on the default bus
    routing.publish(event)
    # THEN one message arrives (one rule matched, not two), carrying the event unchanged
    (delivered,) = routing.drain()
    for field in ("source", "detail-type", "detail", "resources"):
        assert delivered[field] == event[field], field
    assert delivered["time"].replace("+00:00", "Z") == event["time"]


@pytest.mark.parametrize("name", sample_events())
def test_handled_event_matches_exactly_the_rule_for_its_kind(routing, name):
    routing.publish(load_event(name))
    assert routing.rules_that_delivered() == [HANDLED[name]]


@pytest.mark.parametrize("case", sorted(IGNORED))
def test_other_events_do_not_reach_the_notice_queue(routing, case):
    routing.publish(IGNORED[case])
    assert routing.drain() == []
    assert routing.rules_that_delivered() == []


def test_every_rule_is_needed_by_some_sample_event():
    assert set(HANDLED.values()) == set(cfn.resources_of_type("AWS::Events::Rule"))


def test_a_notice_that_keeps_failing_ends_in_the_dead_letter_queue(routing):
    # GIVEN a delivered notice
    routing.publish(load_event("spot-interruption-terminate.json"))
    max_receives = cfn.resource("NoticeQueue")["Properties"]["RedrivePolicy"]["maxReceiveCount"]
    # WHEN every receive fails (the message comes back at once, as the handler asks)
    for _ in range(max_receives):
        (_delivery,) = routing.sqs.receive_message(
            QueueUrl=routing.queue_url, MaxNumberOfMessages=1, VisibilityTimeout=0
        )["Messages"]
    # THEN the next receive finds it moved to the dead-letter queue
    assert routing.sqs.receive_message(QueueUrl=routing.queue_url).get("Messages", []) == []
    dlq_url = routing.sqs.get_queue_url(QueueName="notices-dlq")["QueueUrl"]
    (dead,) = routing.sqs.receive_message(QueueUrl=dlq_url)["Messages"]
    assert json.loads(dead["Body"])["detail"]["instance-id"] == "i-0a1b2c3d4e5f60001"
    routing.sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=dead["ReceiptHandle"])
