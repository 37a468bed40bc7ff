"""Forged events and routine stops on the moto server: what EC2 says decides, not the event.

The instances live in moto's EC2 (its own lifecycle, state and StateReason: moto records a
TerminateInstances as Client.UserInitiatedShutdown, as EC2 does), the ledger in moto's
DynamoDB, all over HTTP. The head node answers through FakeChannel, which drains what it
is asked to: a notice that must not drain shows up as a drain there if it is sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from spot_responder.adapters.instances_ec2 import Ec2Directory
from spot_responder.adapters.ledger_dynamodb import DynamoDbLedger
from spot_responder.adapters.rearm_scheduler import SchedulerRearm
from spot_responder.handlers.responder import respond
from spot_responder.ledger import Status, iso
from spot_responder.observability import metrics
from spot_responder.responder import RecordStatus, Responder
from spot_responder.settings import Settings
from tests import cfn
from tests.aws import Aws, moto_server
from tests.faults.accounting import NoticeQueue, assert_ledger_accounts_for, queue_settings
from tests.support import FakeChannel, load_event

pytestmark = pytest.mark.aws

QUEUE = queue_settings()
ACCOUNT = "123456789012"  # moto's, and the stack's here
CAP = 20
# Metrics an alarm of template.yaml watches (besides the DLQ and Lambda errors).
ALARMED = {
    a["Properties"]["MetricName"]
    for a in cfn.resources_of_type("AWS::CloudWatch::Alarm").values()
    if a["Properties"]["Namespace"] == "SpotResponder"
}


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    with moto_server() as endpoint:
        yield Aws(endpoint)


def launch(aws: Aws, cluster: str, kind: str, *, count: int = 1, spot: bool = True) -> list[str]:
    ec2 = aws.client("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    tags = {"ray-cluster-name": cluster, "ray-node-type": kind, "ray-user-node-type": kind}
    kwargs: dict[str, Any] = {
        "ImageId": image,
        "MinCount": count,
        "MaxCount": count,
        "InstanceType": "r7i.2xlarge",
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    }
    if spot:
        kwargs["InstanceMarketOptions"] = {"MarketType": "spot"}
    return [i["InstanceId"] for i in ec2.run_instances(**kwargs)["Instances"]]


@pytest.fixture
def ledger(aws: Aws, request: pytest.FixtureRequest) -> Iterator[DynamoDbLedger]:
    dynamodb = aws.client("dynamodb")
    name = f"trust-{request.node.name[:40]}"
    dynamodb.create_table(**cfn.dynamodb_table_kwargs("LedgerTable", name))
    yield DynamoDbLedger(aws.resource("dynamodb").Table(name))
    dynamodb.delete_table(TableName=name)


@pytest.fixture
def channel() -> FakeChannel:
    return FakeChannel()


@pytest.fixture
def responder(aws: Aws, ledger: DynamoDbLedger, channel: FakeChannel) -> Responder:
    settings = Settings(
        max_receive_count=QUEUE["max_receive_count"], account_id=ACCOUNT, max_nodes_per_event=CAP
    )
    return Responder(
        directory=Ec2Directory(aws.client("ec2")), channel=channel, ledger=ledger, settings=settings
    )


def run(queue: NoticeQueue, responder: Responder) -> set[str]:
    """Deliver until the queue is empty; the alarmed metrics the deliveries emitted."""
    emitted: set[str] = set()
    while (delivery := queue.receive()) is not None:
        event, batch = delivery
        metrics.clear_metrics()
        response, report = respond(event, None, responder)
        emitted |= set(metrics.metric_set) & ALARMED
        metrics.clear_metrics()
        queue.settle(batch, response, report)
    return emitted


def event_named(name: str, instance_id: str, event_id: str, **changes: Any) -> dict[str, Any]:
    event = load_event(name)
    event.update({"id": event_id, "time": iso(datetime.now(UTC)), **changes})
    event["detail"]["instance-id"] = instance_id
    return event


def test_forged_and_misrouted_events_drain_nothing_and_the_ledger_says_why(
    aws, responder, ledger, channel
):
    # GIVEN a Ray cluster with an on-demand worker and a running spot worker
    (on_demand,) = launch(aws, "trusting", "worker", spot=False)
    (running,) = launch(aws, "trusting", "worker")
    queue = NoticeQueue(QUEUE["max_receive_count"], QUEUE["batch_size"])
    # WHEN these arrive: a spot warning for the on-demand instance, a "shutting-down"
    # for an instance EC2 says is running, and a spot warning from another account
    queue.send(
        event_named("spot-interruption-terminate.json", on_demand, "forged-1"),
        event_named("state-change-shutting-down.json", running, "forged-2"),
        event_named(
            "spot-interruption-terminate.json", running, "forged-3", account="999999999999"
        ),
    )
    alarmed = run(queue, responder)

    # THEN nothing was drained, nothing alarmed, every record settled and recorded
    assert channel.drained == []
    assert channel.requests == []
    assert alarmed == set()
    assert len(queue.settled) == 3
    assert queue.dead_lettered == []
    assert_ledger_accounts_for(queue, ledger)
    # AND the ledger says why each was not acted on
    forged = ledger.get(f"{on_demand}#spot-interruption")
    assert (forged.status, forged.lifecycle) == (Status.RECORDED, "on-demand")
    assert "for a on-demand instance" in forged.reason
    contradicted = ledger.get(f"{running}#state-change:shutting-down")
    assert contradicted.status is Status.RECORDED
    assert "EC2 says running" in contradicted.reason
    foreign = ledger.get("rejected#forged-3")
    assert foreign.status is Status.REJECTED
    assert "account 999999999999" in foreign.reason


def test_health_event_naming_500_instances_drains_at_most_the_cap(aws, responder, ledger, channel):
    # GIVEN 60 Ray workers, and a retirement (starting in 10 minutes) that names them and
    # 440 instances that are no Ray nodes
    workers = launch(aws, "fleet", "worker", count=60)
    strangers = [f"i-{n:017x}" for n in range(0xF0000, 0xF0000 + 440)]
    event = load_event("health-scheduled-retirement.json")
    event["id"] = "health-500"
    start = datetime.now(UTC) + timedelta(minutes=10)
    event["detail"]["startTime"] = format_datetime(start, usegmt=True)
    event["detail"]["affectedEntities"] = [{"entityValue": i} for i in workers + strangers]
    queue = NoticeQueue(QUEUE["max_receive_count"], QUEUE["batch_size"])
    (message_id,) = queue.send(event)

    # WHEN it is handled
    run(queue, responder)

    # THEN exactly the cap of Ray nodes was drained, the other Ray nodes recorded with why
    assert len(channel.drained) == CAP
    assert set(channel.drained) <= set(workers)
    assert queue.settled == {message_id: RecordStatus.HANDLED}
    entries = {w: ledger.get(f"{w}#scheduled-change") for w in workers}
    drained = [w for w, e in entries.items() if e.status is Status.DRAINED]
    held_back = [w for w, e in entries.items() if e.status is Status.RECORDED]
    assert sorted(drained) == sorted(channel.drained)
    assert len(held_back) == 60 - CAP
    for worker in held_back:
        assert "more than the 20 one event may drain" in entries[worker].reason
    # AND the 440 strangers cost no ledger write at all
    assert all(ledger.get(f"{i}#scheduled-change") is None for i in strangers)
    assert_ledger_accounts_for(queue, ledger)


def test_ray_down_is_recorded_quietly_nothing_drained_alarmed_or_dead_lettered(
    aws, responder, ledger, channel
):
    # GIVEN a running cluster: a head and two spot workers
    (head,) = launch(aws, "going-down", "head", spot=False)
    workers = launch(aws, "going-down", "worker", count=2)
    # WHEN `ray down` terminates all three (EC2 records Client.UserInitiatedShutdown) and
    # their state changes arrive: shutting-down, then terminated
    aws.client("ec2").terminate_instances(InstanceIds=[head, *workers])
    queue = NoticeQueue(QUEUE["max_receive_count"], QUEUE["batch_size"])
    for state in ("shutting-down", "terminated"):
        for n, instance in enumerate([head, *workers]):
            event = event_named("state-change-shutting-down.json", instance, f"{state}-{n}")
            event["detail"]["state"] = state
            queue.send(event)
    alarmed = run(queue, responder)

    # THEN no drain, no alarmed metric, nothing dead-lettered
    assert channel.drained == []
    assert alarmed == set()
    assert queue.dead_lettered == []
    assert len(queue.settled) == 6
    # AND the ledger records each as asked for, not as an interruption
    for instance in (head, *workers):
        entry = ledger.get(f"{instance}#state-change:shutting-down")
        assert entry.status is Status.RECORDED
        assert "Client.UserInitiatedShutdown" in entry.reason
    assert_ledger_accounts_for(queue, ledger)


def test_a_retirement_days_ahead_is_drained_near_its_start_not_at_once(aws, ledger, channel):
    # GIVEN a Ray worker, and the stack's schedule group and notice queue as the template
    # declares them
    (worker,) = launch(aws, "retiring", "worker")
    group = cfn.sub(
        cfn.resource("NoticeRearmScheduleGroup")["Properties"]["Name"],
        {"AWS::StackName": "spot-responder"},
    )
    scheduler = aws.client("scheduler")
    scheduler.create_schedule_group(Name=group)
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName="retiring-notices")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/spot-responder-NoticeRearmRole"
    now = [datetime.now(UTC)]
    responder = Responder(
        directory=Ec2Directory(aws.client("ec2")),
        channel=channel,
        ledger=ledger,
        settings=Settings(max_receive_count=QUEUE["max_receive_count"], account_id=ACCOUNT),
        clock=lambda: now[0],
        rearm=SchedulerRearm(scheduler, group, role_arn, queue_arn),
    )
    # AND a retirement of the worker that starts in two days
    start = (now[0] + timedelta(days=2)).replace(microsecond=0)
    event = event_named("health-scheduled-retirement.json", worker, "retire-in-2-days")
    event["resources"] = [worker]
    event["detail"]["startTime"] = format_datetime(start, usegmt=True)
    event["detail"]["affectedEntities"] = [{"entityValue": worker}]
    queue = NoticeQueue(QUEUE["max_receive_count"], QUEUE["batch_size"])
    queue.send(event)

    # WHEN it arrives
    run(queue, responder)

    # THEN nothing is drained yet; the ledger says when it comes back
    assert channel.drained == []
    entry = ledger.get(f"{worker}#scheduled-change")
    assert entry.status is Status.SCHEDULED
    comes_back = start - timedelta(minutes=14)
    assert f"comes back to be drained at {iso(comes_back)}" in entry.reason
    # AND one schedule in the stack's group brings the same event to the notice queue then
    (listed,) = scheduler.list_schedules(GroupName=group)["Schedules"]
    armed = scheduler.get_schedule(GroupName=group, Name=listed["Name"])
    assert armed["ScheduleExpression"] == f"at({comes_back.strftime('%Y-%m-%dT%H:%M:%S')})"
    assert armed["ActionAfterCompletion"] == "DELETE"
    assert (armed["Target"]["Arn"], armed["Target"]["RoleArn"]) == (queue_arn, role_arn)
    assert json.loads(armed["Target"]["Input"]) == event

    # WHEN the same event is delivered again before then (Health updates it): armed once
    queue.send(event)
    run(queue, responder)
    assert len(scheduler.list_schedules(GroupName=group)["Schedules"]) == 1
    assert channel.drained == []

    # WHEN the schedule fires at its time
    now[0] = comes_back + timedelta(seconds=20)
    queue.send(armed["Target"]["Input"])
    run(queue, responder)

    # THEN the worker is drained then, with the start as Ray's deadline at the latest
    assert channel.drained == [worker]
    entry = ledger.get(f"{worker}#scheduled-change")
    assert entry.status is Status.DRAINED
    assert datetime.fromisoformat(entry.drain_deadline) <= start
    assert queue.dead_lettered == []
