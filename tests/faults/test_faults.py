"""Faults between the queue and the head node: every record retried or dead-lettered, never lost.

Each test runs notices through the real handler (`respond`) as the queue delivers them
(`NoticeQueue`: SQS with the template's redrive policy), injects one fault, and asserts
the books: records in = records settled + records dead-lettered, every batch on its own
(settled + retried), and the ledger saying what happened to every notice.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from spot_responder.adapters.channel_local import LocalClusterChannel
from spot_responder.adapters.channel_ssm import SsmClusterChannel
from spot_responder.adapters.instances_ec2 import Ec2Directory
from spot_responder.adapters.ledger_dynamodb import DynamoDbLedger
from spot_responder.adapters.ledger_sqlite import SqliteLedger
from spot_responder.handlers.responder import respond
from spot_responder.ledger import Status, iso
from spot_responder.responder import STALE_CLAIM, BatchReport, RecordStatus, Responder
from spot_responder.settings import Settings
from tests import cfn
from tests.aws import Aws, free_port, moto_server
from tests.faults.accounting import (
    NoticeQueue,
    assert_ledger_accounts_for,
    queue_settings,
)
from tests.faults.injection import (
    DyingChannel,
    DyingLedger,
    FakeClock,
    LambdaTimedOut,
    Throttle,
    TransientThrottle,
    dynamodb_item,
    stand_in_python,
)
from tests.support import (
    ARM_WORKER,
    X86_WORKER,
    FakeChannel,
    FakeDirectory,
    load_event,
    ray_instance,
)

QUEUE = queue_settings()
MAX_RECEIVES = QUEUE["max_receive_count"]
VISIBILITY_TIMEOUT = timedelta(seconds=QUEUE["visibility_timeout_s"])
START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
OTHER_CLUSTER_WORKER = "i-0b0b0b0b0b0b0b0b1"
# A warning EventBridge delivered 100 s late: 20 s of its window are left, so a notice
# that keeps failing is retried on deliveries 5 s apart until no retry can land in the
# window, and then the handler dead-letters it (retries counted in time, not receives).
LATE = START - timedelta(seconds=100)
RETRY_DELAY = timedelta(seconds=5)
DELIVERIES_IN_WINDOW = (LATE + timedelta(seconds=120) - START) // RETRY_DELAY
MALFORMED = '{"version": "0", "id": "cut-short", "detail-type": "EC2 Spot Instance Interr'


# ---------------------------------------------------------------- building blocks


def warning(instance_id: str, event_id: str, at: datetime = START) -> dict[str, Any]:
    event = load_event("spot-interruption-terminate.json")
    event["id"] = event_id
    event["time"] = iso(at)
    event["detail"]["instance-id"] = instance_id
    return event


def shutting_down(instance_id: str, event_id: str, at: datetime = START) -> dict[str, Any]:
    event = load_event("state-change-shutting-down.json")
    event["id"] = event_id
    event["time"] = iso(at)
    event["detail"]["instance-id"] = instance_id
    return event


def not_ray(at: datetime = START) -> dict[str, Any]:
    event = load_event("spot-interruption-not-ray.json")
    event["time"] = iso(at)
    return event


def settings(**changes: Any) -> Settings:
    return Settings(**{"max_receive_count": MAX_RECEIVES, **changes})


def two_clusters() -> FakeDirectory:
    return FakeDirectory(
        # EC2 has it shutting down for a spot reclaim (what its state changes say here)
        replace(
            ray_instance(X86_WORKER),
            state="shutting-down",
            state_reason="Server.SpotInstanceTermination",
        ),
        ray_instance(ARM_WORKER),
        ray_instance(OTHER_CLUSTER_WORKER, cluster="second-cluster"),
    )


def responder_of(
    channel: Any, ledger: Any, clock: FakeClock, directory: Any = None, **changes: Any
) -> Responder:
    """The real responder on the test's clock; two clusters unless `directory` says else."""
    return Responder(
        directory=directory or two_clusters(),
        channel=channel,
        ledger=ledger,
        settings=settings(**changes),
        clock=clock.now,
    )


def run_until_settled(
    queue: NoticeQueue,
    responder: Responder,
    clock: FakeClock | None = None,
    *,
    before_delivery: Callable[[int], None] | None = None,
    retry_delay: timedelta = timedelta(seconds=5),
) -> list[BatchReport | None]:
    """Deliver until the queue is empty; a dead invocation's batch returns after the
    visibility timeout, a failed record after the retry delay. One report per delivery
    (None for an invocation that died)."""
    reports: list[BatchReport | None] = []
    while (delivery := queue.receive()) is not None:
        event, batch = delivery
        if before_delivery is not None:
            before_delivery(len(reports) + 1)
        try:
            response, report = respond(event, None, responder)
        except LambdaTimedOut:
            queue.died(batch)
            reports.append(None)
            if clock is not None:
                clock.advance(VISIBILITY_TIMEOUT)
            continue
        queue.settle(batch, response, report)
        reports.append(report)
        if clock is not None:
            clock.advance(retry_delay)
    return reports


def statuses_of(report: BatchReport | None) -> list[RecordStatus]:
    assert report is not None
    return sorted(report.statuses.values())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def sqlite_ledger(tmp_path) -> Iterator[SqliteLedger]:
    store = SqliteLedger(tmp_path / "ledger.sqlite3")
    yield store
    store.close()


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    with moto_server() as endpoint:
        yield Aws(endpoint)


@pytest.fixture
def ledger_table(aws, request) -> Iterator[Any]:
    """The ledger table as template.yaml declares it, with its own client (and hooks)."""
    dynamodb = aws.client("dynamodb")
    name = f"faults-{request.node.name[:40]}"
    dynamodb.create_table(**cfn.dynamodb_table_kwargs("LedgerTable", name))
    yield aws.resource("dynamodb").Table(name)
    dynamodb.delete_table(TableName=name)


# ---------------------------------------------------------------- head node unreachable


@pytest.fixture(scope="module")
def headless_cluster(aws) -> dict[str, str]:
    """A `ray up` cluster whose head instance is gone: one tagged spot worker, no head."""
    ec2 = aws.client("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    tags = {
        "ray-cluster-name": "headless",
        "ray-node-type": "worker",
        "ray-user-node-type": "x86_spot_worker",
    }
    worker = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        InstanceType="r7i.2xlarge",
        InstanceMarketOptions={"MarketType": "spot"},
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    )["Instances"][0]
    return {"worker": worker["InstanceId"]}


@pytest.mark.aws
def test_head_node_unreachable_over_ssm_is_retried_then_dead_lettered_and_the_ledger_says_so(
    aws, headless_cluster, ledger_table, clock
):
    # GIVEN the AWS adapters over moto, and a cluster whose head node is gone
    directory = Ec2Directory(aws.client("ec2"))
    channel = SsmClusterChannel(
        aws.client("ssm"), directory, "spot-responder-respond", timeout_s=25, poll_s=0.5
    )
    ledger = DynamoDbLedger(ledger_table)
    responder = responder_of(channel, ledger, clock, directory)
    queue = NoticeQueue(MAX_RECEIVES, QUEUE["batch_size"])
    worker = headless_cluster["worker"]
    queue.send(warning(worker, "w-1", at=LATE), not_ray(), MALFORMED)

    # WHEN the queue delivers until nothing is left
    reports = run_until_settled(queue, responder, clock)

    # THEN the warning was tried while a retry could land in its window, then dead-lettered
    assert len(reports) == DELIVERIES_IN_WINDOW
    assert statuses_of(reports[0]) == sorted(
        [RecordStatus.RETRY, RecordStatus.HANDLED, RecordStatus.REJECTED]
    )
    assert len(queue.dead_lettered) == 1
    entry = ledger.get(f"{worker}#spot-interruption")
    assert entry.status is Status.DEAD_LETTERED
    assert entry.attempts == DELIVERIES_IN_WINDOW
    assert "no running head node" in entry.reason
    assert "no retry can land before its deadline" in entry.reason
    # AND the books balance: 3 in = 2 settled + 1 dead-lettered, each noted in the ledger
    assert_ledger_accounts_for(queue, ledger)


@pytest.mark.aws
def test_ec2_failing_while_the_ssm_channel_looks_up_the_head_is_retried_not_a_crash(
    aws, headless_cluster, sqlite_ledger, clock
):
    # GIVEN EC2 answers the instance lookup, then is throttled when the head is looked up
    ec2 = aws.client("ec2")
    throttle = Throttle(
        ec2,
        "ec2",
        "DescribeInstances",
        code="RequestLimitExceeded",
        when=lambda params: "tag:ray-node-type" in _body_text(params),
    )
    throttle.on = True
    directory = Ec2Directory(ec2)
    channel = SsmClusterChannel(aws.client("ssm"), directory, "doc", timeout_s=25)
    responder = responder_of(channel, sqlite_ledger, clock, directory)
    queue = NoticeQueue(MAX_RECEIVES, QUEUE["batch_size"])
    queue.send(warning(headless_cluster["worker"], "w-1"))

    # WHEN it is delivered once
    event, batch = queue.receive()
    response, report = respond(event, None, responder)
    queue.settle(batch, response, report)

    # THEN the record is retried (a passing failure), and the ledger says why
    assert throttle.count == 1
    assert report.statuses[batch[0].message_id] is RecordStatus.RETRY
    entry = sqlite_ledger.get(f"{headless_cluster['worker']}#spot-interruption")
    assert entry.status is Status.FAILED
    assert "RequestLimitExceeded" in entry.reason


def _body_text(params: dict[str, Any]) -> str:
    """The serialized request as a before-call hook sees it (JSON bytes, or EC2's form)."""
    return str(params.get("body"))


# ---------------------------------------------------------------- the command times out (SSM)


class StuckThenAnsweringHead:
    """GetCommandInvocation answers `InProgress` while `stuck`, then a drained response for
    the last request sent (what a head node running ray_hooks prints)."""

    def __init__(self, ssm: Any) -> None:
        self.stuck = True
        self.requests: list[dict[str, Any]] = []
        ssm.meta.events.register("provide-client-params.ssm.SendCommand", self.sent)
        ssm.meta.events.register("before-call.ssm.GetCommandInvocation", self.invocation)

    def sent(self, params: dict[str, Any], **_: Any) -> None:
        encoded = params["Parameters"]["Request"][0]
        self.requests.append(json.loads(base64.b64decode(encoded)))

    def invocation(self, **_: Any) -> Any:
        ok = AWSResponse("https://ssm.invalid", 200, {}, None)
        if self.stuck:
            return ok, {"Status": "InProgress", "ResponseCode": -1}
        request = self.requests[-1]
        answer = {
            "version": 1,
            "cluster": request["cluster"],
            "request_id": request["request_id"],
            "ray_version": "2.60.0",
            "results": [
                {
                    "notice_id": n["notice_id"],
                    "instance_id": n["instance_id"],
                    "outcome": "drained",
                    "ray_node_id": "ab" * 28,
                    "node": None,
                    "drain_deadline": n["drain_deadline"],
                    "drain_issued_at": n["drain_deadline"],
                    "message": "drain accepted by GCS (reason PREEMPTION)",
                    "impacted_jobs": [],
                }
                for n in request["notices"]
            ],
            "timings": {"drain_s": 0.1, "total_s": 0.2},
        }
        return ok, {
            "Status": "Success",
            "ResponseCode": 0,
            "StandardOutputContent": json.dumps(answer),
        }


@pytest.fixture(scope="module")
def headed_cluster(aws) -> dict[str, str]:
    ec2 = aws.client("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]

    def launch(node_kind: str, node_type: str, market: str | None) -> str:
        tags = {
            "ray-cluster-name": "headed",
            "ray-node-type": node_kind,
            "ray-user-node-type": node_type,
        }
        kwargs: dict[str, Any] = {
            "ImageId": image,
            "MinCount": 1,
            "MaxCount": 1,
            "InstanceType": "r7i.2xlarge",
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ],
        }
        if market:
            kwargs["InstanceMarketOptions"] = {"MarketType": market}
        return str(ec2.run_instances(**kwargs)["Instances"][0]["InstanceId"])

    return {
        "head": launch("head", "head_node", None),
        "worker": launch("worker", "x86_spot_worker", "spot"),
    }


@pytest.mark.aws
def test_command_timing_out_over_ssm_is_retried_and_drained_within_the_notice_deadline(
    aws, headed_cluster, sqlite_ledger, clock
):
    # GIVEN a head node whose command hangs for the first two deliveries
    ssm = aws.client("ssm")
    head = StuckThenAnsweringHead(ssm)
    directory = Ec2Directory(aws.client("ec2"))
    timeout_s = int(cfn.template()["Parameters"]["CommandTimeoutSeconds"]["Default"])
    channel = SsmClusterChannel(
        ssm,
        directory,
        "doc",
        timeout_s=timeout_s,
        poll_s=0.5,
        sleep=clock.sleep,
        clock=clock.monotonic,
    )
    responder = responder_of(channel, sqlite_ledger, clock, directory)
    queue = NoticeQueue(MAX_RECEIVES, QUEUE["batch_size"])
    worker = headed_cluster["worker"]
    (message_id,) = queue.send(warning(worker, "w-1"))

    def head_answers_from_the_third(delivery: int) -> None:
        head.stuck = delivery < 3

    # WHEN the queue delivers until nothing is left (time as the channel and queue spend it)
    reports = run_until_settled(
        queue, responder, clock, before_delivery=head_answers_from_the_third
    )

    # THEN the first two timed out and were retried, the third drained
    assert [list(r.statuses.values()) for r in reports] == [
        [RecordStatus.RETRY],
        [RecordStatus.RETRY],
        [RecordStatus.HANDLED],
    ]
    assert "still InProgress after 25 s" in reports[0].reasons[message_id]
    entry = sqlite_ledger.get(f"{worker}#spot-interruption")
    assert (entry.status, entry.attempts) == (Status.DRAINED, 3)
    # AND the drain went out before the deadline the policy gave Ray
    assert datetime.fromisoformat(entry.updated_at) < datetime.fromisoformat(entry.drain_deadline)
    assert all(r["cluster"] == "headed" for r in head.requests)
    assert_ledger_accounts_for(queue, sqlite_ledger)


# ---------------------------------------------------------------- the command fails (ray_hooks)


@pytest.fixture
def dead_gcs_address() -> str:
    """host:port of a free port with nothing listening: a GCS that is down."""
    return f"127.0.0.1:{free_port()}"


def test_gcs_down_is_a_passing_failure_retried_until_dead_lettered(
    dead_gcs_address, sqlite_ledger, clock
):
    # GIVEN the local channel (the real `python -m ray_hooks respond`) pointed at a dead GCS
    channel = LocalClusterChannel(dead_gcs_address, timeout_s=60)
    responder = responder_of(channel, sqlite_ledger, clock)
    queue = NoticeQueue(MAX_RECEIVES, QUEUE["batch_size"])
    queue.send(warning(X86_WORKER, "w-1", at=LATE), warning(ARM_WORKER, "w-2", at=LATE), not_ray())

    # WHEN the queue delivers until nothing is left
    reports = run_until_settled(queue, responder, clock)

    # THEN one request per delivery (both workers are one cluster), each failing with exit 3
    assert channel.requests_sent == DELIVERIES_IN_WINDOW
    assert len(reports) == DELIVERIES_IN_WINDOW
    assert len(queue.dead_lettered) == 2
    for worker in (X86_WORKER, ARM_WORKER):
        entry = sqlite_ledger.get(f"{worker}#spot-interruption")
        assert (entry.status, entry.attempts) == (Status.DEAD_LETTERED, DELIVERIES_IN_WINDOW)
        assert "ray_hooks exited 3" in entry.reason
    assert_ledger_accounts_for(queue, sqlite_ledger)


@pytest.mark.ray
def test_gcs_back_before_the_deadline_drains_on_the_retry(ray_cluster, sqlite_ledger):
    # GIVEN a real Ray cluster whose GCS the channel cannot reach for two deliveries
    from ray._raylet import GcsClient

    from tests.ray_hooks_support import drained_by_ray

    channel = LocalClusterChannel(f"127.0.0.1:{free_port()}", timeout_s=60)
    responder = Responder(
        directory=FakeDirectory(ray_instance(X86_WORKER)),
        channel=channel,
        ledger=sqlite_ledger,
        settings=settings(),
    )
    queue = NoticeQueue(MAX_RECEIVES, QUEUE["batch_size"])
    queue.send(warning(X86_WORKER, "w-1", at=datetime.now(UTC)))

    def gcs_back_from_the_third(delivery: int) -> None:
        if delivery == 3:
            channel.ray_address = ray_cluster.address

    # WHEN the queue delivers until nothing is left
    reports = run_until_settled(queue, responder, before_delivery=gcs_back_from_the_third)

    # THEN the third delivery drained the node, as Ray's GCS confirms
    assert [list(r.statuses.values()) for r in reports] == [
        [RecordStatus.RETRY],
        [RecordStatus.RETRY],
        [RecordStatus.HANDLED],
    ]
    entry = sqlite_ledger.get(f"{X86_WORKER}#spot-interruption")
    assert (entry.status, entry.attempts) == (Status.DRAINED, 3)
    gcs = GcsClient(address=ray_cluster.gcs_address)
    assert ray_cluster.node_id_for(X86_WORKER) in drained_by_ray(gcs)
    assert_ledger_accounts_for(queue, sqlite_ledger)


@pytest.mark.parametrize(
    ("script", "outcome", "reason"),
    [
        pytest.param(
            'echo "Traceback (most recent call last):" >&2; echo "Segmentation fault" >&2; '
            "exit 139",
            RecordStatus.RETRY,
            "ray_hooks exited 139: Segmentation fault",
            id="ray_hooks-crashes",
        ),
        pytest.param(
            "echo 'not json at all'; exit 0",
            RecordStatus.RETRY,
            "ray_hooks exited 0: no output",
            id="ray_hooks-prints-garbage",
        ),
        pytest.param(
            'echo \'{"version": 1, "error": "unsupported contract version 7"}\'; exit 2',
            RecordStatus.REJECTED,
            "unsupported contract version 7",
            id="ray_hooks-refuses-the-request",
        ),
    ],
)
def test_command_failing_is_retried_and_a_refusal_is_rejected_not_retried(
    tmp_path, sqlite_ledger, clock, script, outcome, reason
):
    channel = LocalClusterChannel("127.0.0.1:1", python=stand_in_python(tmp_path, "py", script))
    responder = responder_of(channel, sqlite_ledger, clock)
    queue = NoticeQueue(MAX_RECEIVES, QUEUE["batch_size"])
    (message_id,) = queue.send(warning(X86_WORKER, "w-1", at=LATE))

    reports = run_until_settled(queue, responder, clock)

    assert reports[0].statuses[message_id] is outcome
    entry = sqlite_ledger.get(f"{X86_WORKER}#spot-interruption")
    assert reason in entry.reason
    if outcome is RecordStatus.REJECTED:
        assert len(reports) == 1
        assert entry.status is Status.REJECTED
    else:
        assert len(reports) == DELIVERIES_IN_WINDOW
        assert entry.status is Status.DEAD_LETTERED
    assert_ledger_accounts_for(queue, sqlite_ledger)


# ---------------------------------------------------------------- the command times out (local)


@pytest.fixture
def black_hole_gcs() -> Iterator[str]:
    """A port that accepts connections and never answers: a GCS that hangs."""
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))  # ray canonicalizes 127.0.0.1 to the node's own IP
        listener.listen(64)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_command_timing_out_kills_ray_hooks_and_retries_the_records(
    black_hole_gcs, sqlite_ledger, clock
):
    # GIVEN ray_hooks waiting on a GCS that never answers, longer than the channel waits
    channel = LocalClusterChannel(black_hole_gcs, timeout_s=2)
    # each delivery costs 2 s here
    responder = responder_of(channel, sqlite_ledger, clock, max_receive_count=2)
    queue = NoticeQueue(2, QUEUE["batch_size"])
    queue.send(warning(X86_WORKER, "w-1"), warning(OTHER_CLUSTER_WORKER, "w-2"))

    reports = run_until_settled(queue, responder, clock)

    # THEN both clusters' commands timed out on both deliveries, and both were dead-lettered
    assert len(reports) == 2
    assert channel.requests_sent == 4
    for worker in (X86_WORKER, OTHER_CLUSTER_WORKER):
        entry = sqlite_ledger.get(f"{worker}#spot-interruption")
        assert entry.status is Status.DEAD_LETTERED
        assert "timed out after 2 s" in entry.reason
    assert_ledger_accounts_for(queue, sqlite_ledger)


# ---------------------------------------------------------------- DynamoDB throttling


def dynamodb_responder(ledger_table, clock, channel=None, directory=None) -> Responder:
    return responder_of(channel or FakeChannel(), DynamoDbLedger(ledger_table), clock, directory)


@pytest.mark.aws
def test_throttled_ledger_writes_give_every_record_back_and_none_is_lost(ledger_table, clock):
    # GIVEN every ledger write throttled during the first delivery
    throttle = Throttle(ledger_table.meta.client, "dynamodb", "PutItem")
    channel = FakeChannel()
    responder = dynamodb_responder(ledger_table, clock, channel)
    queue = NoticeQueue(MAX_RECEIVES, QUEUE["batch_size"])
    queue.send(
        warning(X86_WORKER, "w-1"),
        warning(OTHER_CLUSTER_WORKER, "w-2"),
        not_ray(),
        MALFORMED,
    )

    def throttled_first(delivery: int) -> None:
        throttle.on = delivery == 1

    reports = run_until_settled(queue, responder, clock, before_delivery=throttled_first)

    # THEN nothing was sent or settled on the throttled delivery: all four came back
    assert throttle.count >= 3  # the non-Ray notice costs no ledger write
    assert statuses_of(reports[0]) == sorted([RecordStatus.RETRY] * 3 + [RecordStatus.HANDLED])
    assert all("ProvisionedThroughputExceeded" in r for r in reports[0].reasons.values())
    # AND the next delivery handled each of them once
    assert len(reports) == 2
    assert sorted(channel.drained) == sorted([X86_WORKER, OTHER_CLUSTER_WORKER])
    assert_ledger_accounts_for(queue, DynamoDbLedger(ledger_table))


@pytest.mark.aws
def test_throttled_outcome_write_after_the_drain_is_retried_until_the_ledger_has_it(
    ledger_table, clock
):
    # GIVEN claims go through, but writing the outcome is throttled on the first delivery
    outcome_writes = Throttle(
        ledger_table.meta.client,
        "dynamodb",
        "PutItem",
        when=lambda params: dynamodb_item(params)["status"]["S"] != Status.IN_PROGRESS,
    )
    channel = FakeChannel()
    responder = dynamodb_responder(ledger_table, clock, channel)
    queue = NoticeQueue(MAX_RECEIVES, QUEUE["batch_size"])
    queue.send(warning(X86_WORKER, "w-1"))

    def throttled_first(delivery: int) -> None:
        outcome_writes.on = delivery == 1

    reports = run_until_settled(queue, responder, clock, before_delivery=throttled_first)

    # THEN the record came back, was claimed again by its own redelivery, and recorded
    assert statuses_of(reports[0]) == [RecordStatus.RETRY]
    entry = DynamoDbLedger(ledger_table).get(f"{X86_WORKER}#spot-interruption")
    assert entry.status is Status.DRAINED
    assert entry.attempts == 2
    assert_ledger_accounts_for(queue, DynamoDbLedger(ledger_table))


@pytest.mark.aws
def test_throttled_ledger_read_while_deciding_is_retried_not_a_crash(ledger_table, clock):
    # GIVEN a shutting-down notice (the policy reads whether a warning was seen)
    # and ledger reads throttled apart from the claim's own
    reads = Throttle(
        ledger_table.meta.client,
        "dynamodb",
        "GetItem",
        when=lambda params: f"{X86_WORKER}#spot-interruption" in _body_text(params),
    )
    channel = FakeChannel()
    responder = dynamodb_responder(ledger_table, clock, channel)
    queue = NoticeQueue(MAX_RECEIVES, QUEUE["batch_size"])
    queue.send(shutting_down(X86_WORKER, "s-1"), warning(ARM_WORKER, "w-2"))

    def throttled_first(delivery: int) -> None:
        reads.on = delivery == 1

    reports = run_until_settled(queue, responder, clock, before_delivery=throttled_first)

    # THEN the first delivery returned (no crash), the state change came back and was handled
    assert reads.count >= 1
    assert statuses_of(reports[0]) == sorted([RecordStatus.RETRY, RecordStatus.HANDLED])
    ledger = DynamoDbLedger(ledger_table)
    assert ledger.get(f"{X86_WORKER}#state-change:shutting-down").status is Status.DRAINED
    assert ledger.get(f"{ARM_WORKER}#spot-interruption").status is Status.DRAINED
    assert_ledger_accounts_for(queue, ledger)


@pytest.mark.aws
def test_short_throttling_is_absorbed_by_the_sdk_retries(ledger_table, clock):
    throttle = TransientThrottle(ledger_table.meta.client, "PutItem", times=2)
    responder = dynamodb_responder(ledger_table, clock)
    queue = NoticeQueue(MAX_RECEIVES, QUEUE["batch_size"])
    queue.send(warning(X86_WORKER, "w-1"))

    reports = run_until_settled(queue, responder, clock)

    assert throttle.count == 2
    assert [list(r.statuses.values()) for r in reports] == [[RecordStatus.HANDLED]]
    assert_ledger_accounts_for(queue, DynamoDbLedger(ledger_table))


# ---------------------------------------------------------------- the Lambda times out mid-batch


def test_lambda_dying_mid_dispatch_leaves_claims_its_redelivery_takes_back_at_once(
    sqlite_ledger, clock
):
    # GIVEN a batch for two clusters; the invocation dies waiting for the second cluster,
    # after the first cluster drained its nodes but before any outcome was written
    fake = FakeChannel()
    channel = DyingChannel(fake, dies_on="second-cluster")
    responder = responder_of(channel, sqlite_ledger, clock)
    queue = NoticeQueue(MAX_RECEIVES, QUEUE["batch_size"])
    queue.send(
        warning(X86_WORKER, "w-1"),
        warning(ARM_WORKER, "w-2"),
        warning(OTHER_CLUSTER_WORKER, "w-3"),
        not_ray(),
    )

    def second_cluster_back_on_redelivery(delivery: int) -> None:
        channel.dies_on = "second-cluster" if delivery == 1 else None

    # WHEN the queue delivers; the dead batch returns after the visibility timeout
    reports = run_until_settled(
        queue, responder, clock, before_delivery=second_cluster_back_on_redelivery
    )

    # THEN the redelivery (after the visibility timeout) claimed them again and
    # handled every notice: one final ledger entry each, on the second attempt
    assert reports[0] is None
    assert len(reports) == 2
    for worker in (X86_WORKER, ARM_WORKER, OTHER_CLUSTER_WORKER):
        entry = sqlite_ledger.get(f"{worker}#spot-interruption")
        assert (entry.status, entry.attempts) == (Status.DRAINED, 2)
    # the first cluster was asked twice (its answer was lost with the invocation);
    # Ray answers a second drain of a draining node "already-draining"
    assert sorted(fake.drained) == sorted([X86_WORKER, ARM_WORKER] * 2 + [OTHER_CLUSTER_WORKER])
    assert_ledger_accounts_for(queue, sqlite_ledger)


def test_lambda_dying_while_writing_outcomes_redoes_only_what_was_not_written(sqlite_ledger, clock):
    # GIVEN an invocation that dies on its third outcome write (after two were written)
    fake = FakeChannel()
    ledger = DyingLedger(sqlite_ledger, dies_on_save=3)
    responder = responder_of(fake, ledger, clock)
    queue = NoticeQueue(MAX_RECEIVES, QUEUE["batch_size"])
    workers = [X86_WORKER, ARM_WORKER, OTHER_CLUSTER_WORKER]
    queue.send(*(warning(w, f"w-{n}") for n, w in enumerate(workers)))

    def survives_the_redelivery(delivery: int) -> None:
        if delivery > 1:
            ledger.dies_on_save = None

    reports = run_until_settled(queue, responder, clock, before_delivery=survives_the_redelivery)

    # THEN the redelivery re-sent only the notice whose outcome was never written
    assert reports[0] is None
    first_pass = fake.drained[:3]
    assert sorted(first_pass) == sorted(workers)
    assert len(fake.drained) == 4
    entries = {w: sqlite_ledger.get(f"{w}#spot-interruption") for w in workers}
    assert all(e.status is Status.DRAINED for e in entries.values())
    assert sorted(e.attempts for e in entries.values()) == [1, 1, 2]
    assert_ledger_accounts_for(queue, sqlite_ledger)


def test_notice_held_by_a_dead_invocation_is_retried_by_other_messages_until_the_claim_is_stale(
    sqlite_ledger, clock
):
    # GIVEN an invocation that died holding the claim on a warning
    fake = FakeChannel()
    dying = DyingChannel(fake, dies_on="ray-on-aws")
    responder = responder_of(dying, sqlite_ledger, clock)
    first = NoticeQueue(MAX_RECEIVES, QUEUE["batch_size"])
    first.send(warning(X86_WORKER, "w-1"))
    event, _ = first.receive()
    with contextlib.suppress(LambdaTimedOut):
        respond(event, None, responder)
    dying.dies_on = None

    # WHEN the same warning arrives as another message (EventBridge delivers at least
    # once) while the claim is fresh
    other = NoticeQueue(MAX_RECEIVES, QUEUE["batch_size"])
    (message_id,) = other.send(warning(X86_WORKER, "w-1"))
    clock.advance(timedelta(seconds=10))
    event, batch = other.receive()
    response, report = respond(event, None, responder)
    other.settle(batch, response, report)

    # THEN it is given back, not acked, and nothing is sent to the cluster
    assert report.statuses[message_id] is RecordStatus.RETRY
    assert "being handled elsewhere" in report.reasons[message_id]
    assert fake.drained == []

    # AND once the claim is older than STALE_CLAIM, its next delivery takes it over
    clock.advance(STALE_CLAIM)
    run_until_settled(other, responder, clock)
    entry = sqlite_ledger.get(f"{X86_WORKER}#spot-interruption")
    assert (entry.status, entry.attempts) == (Status.DRAINED, 2)
    assert fake.drained == [X86_WORKER]
    assert_ledger_accounts_for(other, sqlite_ledger)
