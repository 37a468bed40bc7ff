"""The invocation's time budget, on the moto server over HTTP: heads that never answer and
unreachable heads cost the batch seconds, never the function's timeout.

Twelve `ray up` clusters live in moto's EC2, each a head and a spot worker. Two heads' SSM
Agents are ConnectionLost, two heads take commands and never finish them, eight answer.
One batch carries a warning for every cluster's worker. moto runs no SSM command, so the
heads' answers (and DescribeInstanceInformation, CancelCommand, which moto lacks) are
given by botocore hooks on the SSM client; every other call (EC2, SendCommand, DynamoDB)
goes to moto over HTTP. The handler runs against a Lambda context whose deadline is real
time, and each invocation is timed against it.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from spot_responder.adapters.channel_ssm import SsmClusterChannel
from spot_responder.adapters.instances_ec2 import Ec2Directory
from spot_responder.adapters.ledger_dynamodb import DynamoDbLedger
from spot_responder.handlers.responder import respond
from spot_responder.ledger import Status, iso
from spot_responder.responder import RecordStatus, Responder
from spot_responder.settings import Settings
from tests import cfn
from tests.aws import Aws, moto_server
from tests.faults.accounting import NoticeQueue, assert_ledger_accounts_for, queue_settings
from tests.support import load_event

pytestmark = pytest.mark.aws

FUNCTION_TIMEOUT_S = int(cfn.resource("ResponderFunction")["Properties"]["Timeout"])
COMMAND_TIMEOUT_S = int(cfn.template()["Parameters"]["CommandTimeoutSeconds"]["Default"])
QUEUE = queue_settings()
CLUSTERS = [f"c{n:02d}" for n in range(12)]
OFFLINE = {"c00", "c01"}  # SSM Agent ConnectionLost
STUCK = {"c02", "c03"}  # the command is taken and never finishes


class DeadlineContext:
    """A Lambda context whose remaining time runs down in real time from `timeout_s`."""

    function_name = "spot-responder-test"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-west-2:123456789012:function:spot-responder-test"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


class Heads:
    """What the twelve heads answer to GetCommandInvocation: the healthy ones drain every
    notice they were sent (after one InProgress poll), the stuck ones never finish."""

    def __init__(self, aws: Aws, ssm: Any, heads: dict[str, str]) -> None:
        self._reader = aws.client("ssm")
        self.cluster_of = {head: cluster for cluster, head in heads.items()}
        self.sent_at: dict[str, float] = {}
        self.polls: dict[str, int] = {}
        ssm.meta.events.register("provide-client-params.ssm.SendCommand", self._sent)
        ssm.meta.events.register("before-call.ssm.GetCommandInvocation", self._invocation)

    def _sent(self, params: dict[str, Any], **_: Any) -> None:
        (head,) = params["InstanceIds"]
        self.sent_at[self.cluster_of[head]] = time.monotonic()

    def _invocation(self, params: dict[str, Any], **_: Any) -> Any:
        asked = json.loads(params["body"])
        command_id, head = asked["CommandId"], asked["InstanceId"]
        ok = AWSResponse("https://ssm.invalid", 200, {}, None)
        self.polls[command_id] = self.polls.get(command_id, 0) + 1
        if self.cluster_of[head] in STUCK or self.polls[command_id] == 1:
            return ok, {"Status": "InProgress", "ResponseCode": -1}
        (command,) = self._reader.list_commands(CommandId=command_id)["Commands"]
        request = json.loads(base64.b64decode(command["Parameters"]["Request"][0]))
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
                    "drain_issued_at": iso(datetime.now(UTC)),
                    "message": "drain accepted by GCS (reason PREEMPTION)",
                    "impacted_jobs": [],
                }
                for n in request["notices"]
            ],
        }
        return ok, {
            "Status": "Success",
            "ResponseCode": 0,
            "StandardOutputContent": json.dumps(answer),
        }


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    with moto_server() as endpoint:
        yield Aws(endpoint)


@pytest.fixture(scope="module")
def clusters(aws: Aws) -> dict[str, dict[str, str]]:
    """cluster → {"head": id, "worker": id}, launched in moto as `ray up` tags them."""
    ec2 = aws.client("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]

    def launch(cluster: str, kind: str) -> str:
        tags = {"ray-cluster-name": cluster, "ray-node-type": kind, "ray-user-node-type": kind}
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
        if kind == "worker":
            kwargs["InstanceMarketOptions"] = {"MarketType": "spot"}
        return str(ec2.run_instances(**kwargs)["Instances"][0]["InstanceId"])

    found = {c: {"head": launch(c, "head"), "worker": launch(c, "worker")} for c in CLUSTERS}
    for cluster in OFFLINE:
        aws.agents.ping[found[cluster]["head"]] = "ConnectionLost"
    return found


@pytest.fixture
def ledger(aws: Aws, request: pytest.FixtureRequest) -> Iterator[DynamoDbLedger]:
    dynamodb = aws.client("dynamodb")
    name = f"budget-{request.node.name[:40]}"
    dynamodb.create_table(**cfn.dynamodb_table_kwargs("LedgerTable", name))
    yield DynamoDbLedger(aws.resource("dynamodb").Table(name))
    dynamodb.delete_table(TableName=name)


def warning(instance_id: str, at: datetime) -> dict[str, Any]:
    event = load_event("spot-interruption-terminate.json")
    event["id"] = f"warning-{instance_id}"
    event["time"] = iso(at)
    event["detail"]["instance-id"] = instance_id
    return event


def responder_on(aws: Aws, clusters: dict[str, dict[str, str]], ledger: DynamoDbLedger):
    ssm = aws.client("ssm")
    heads = Heads(aws, ssm, {c: ids["head"] for c, ids in clusters.items()})
    directory = Ec2Directory(aws.client("ec2"))
    channel = SsmClusterChannel(
        ssm, directory, "spot-responder-respond", timeout_s=COMMAND_TIMEOUT_S
    )
    settings = Settings(max_receive_count=QUEUE["max_receive_count"], account_id="123456789012")
    return Responder(directory=directory, channel=channel, ledger=ledger, settings=settings), heads


def timed_delivery(queue: NoticeQueue, responder: Responder, timeout_s: float):
    event, batch = queue.receive()
    context = DeadlineContext(timeout_s)
    started = time.monotonic()
    response, report = respond(event, context, responder)
    elapsed = time.monotonic() - started
    queue.settle(batch, response, report)
    return elapsed, report


def test_twelve_clusters_four_unreachable_return_well_before_the_function_timeout(
    aws, clusters, ledger
):
    # GIVEN one batch with a warning for the worker of each of the twelve clusters
    responder, heads = responder_on(aws, clusters, ledger)
    queue = NoticeQueue(QUEUE["max_receive_count"], QUEUE["batch_size"])
    now = datetime.now(UTC)
    ids = dict(
        zip(
            CLUSTERS,
            queue.send(*(warning(clusters[c]["worker"], now) for c in CLUSTERS)),
            strict=True,
        )
    )

    # WHEN the handler runs with the template's own function timeout
    elapsed, report = timed_delivery(queue, responder, FUNCTION_TIMEOUT_S)
    print(
        f"\n12 clusters, 4 unreachable: invocation took {elapsed:.1f} s of {FUNCTION_TIMEOUT_S} s"
    )

    # THEN it returned before its timeout, with time to spare for the records' retry delay
    assert elapsed < FUNCTION_TIMEOUT_S - 5
    # AND the eight reachable clusters were drained in this very invocation
    for cluster in set(CLUSTERS) - OFFLINE - STUCK:
        assert report.statuses[ids[cluster]] is RecordStatus.HANDLED
        entry = ledger.get(f"{clusters[cluster]['worker']}#spot-interruption")
        assert entry.status is Status.DRAINED
    # AND the four unreachable ones are retried, the ledger saying why
    for cluster in OFFLINE | STUCK:
        assert report.statuses[ids[cluster]] is RecordStatus.RETRY
        entry = ledger.get(f"{clusters[cluster]['worker']}#spot-interruption")
        assert entry.status is Status.FAILED
        expected = "ConnectionLost" if cluster in OFFLINE else "cancelled"
        assert expected in entry.reason, entry.reason
    # AND no command went to an offline agent; the stuck ones were cancelled on give-up
    assert not OFFLINE & set(heads.sent_at)
    cancelled_heads = {head for _, head in aws.agents.cancelled}
    assert cancelled_heads == {clusters[c]["head"] for c in STUCK}
    # AND all ten commands went out at once: none waited for another cluster's answer
    sent = sorted(heads.sent_at.values())
    assert len(sent) == 10
    assert sent[-1] - sent[0] < 5, sent


def test_unreachable_heads_are_retried_until_the_deadline_then_dead_lettered_none_lost(
    aws, clusters, ledger
):
    # GIVEN the same twelve warnings, delivered 95 s late (25 s of the window left), and
    # a function given 12 s: less than a stuck command's own timeout
    responder, _ = responder_on(aws, clusters, ledger)
    queue = NoticeQueue(QUEUE["max_receive_count"], QUEUE["batch_size"])
    late = datetime.now(UTC) - timedelta(seconds=95)
    queue.send(*(warning(clusters[c]["worker"], late) for c in CLUSTERS))
    timeout_s = 12.0

    # WHEN the queue delivers until nothing is left, each delivery timed
    durations = []
    while queue.waiting:
        elapsed, _ = timed_delivery(queue, responder, timeout_s)
        durations.append(elapsed)
    print(f"\ndeliveries: {len(durations)}, each {', '.join(f'{d:.1f}' for d in durations)} s")

    # THEN every invocation returned before its (real) deadline
    assert max(durations) < timeout_s
    # AND count in = recorded + dead-lettered: 8 drained, the 4 unreachable dead-lettered
    # by the handler once no retry could land before their drain deadline
    assert len(queue.settled) == 8
    assert len(queue.dead_lettered) == 4
    assert_ledger_accounts_for(queue, ledger)
    for cluster in OFFLINE | STUCK:
        entry = ledger.get(f"{clusters[cluster]['worker']}#spot-interruption")
        assert entry.status is Status.DEAD_LETTERED
        assert "no retry can land before its deadline" in entry.reason
