"""The AWS adapters against moto's server over HTTP, with resources as template.yaml declares."""

import base64
import contextlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from spot_responder.adapters.channel_ssm import SsmClusterChannel
from spot_responder.adapters.instances_ec2 import Ec2Directory
from spot_responder.adapters.ledger_dynamodb import DynamoDbLedger
from spot_responder.adapters.retry_sqs import SqsRetryDelay
from spot_responder.channel import AgentTooOld, ChannelUnavailable
from spot_responder.contract import NoticeRequest, build_request
from spot_responder.handlers.responder import respond
from spot_responder.ledger import LedgerEntry, Status, iso
from spot_responder.reconcile import record_verdict_outcomes
from spot_responder.responder import RecordStatus, Responder
from spot_responder.settings import Settings
from tests import cfn
from tests.aws import Aws, moto_server
from tests.support import LambdaContext, load_event, sqs_event

pytestmark = pytest.mark.aws
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def aws():
    with moto_server() as endpoint:
        yield Aws(endpoint)


@pytest.fixture(scope="module")
def cluster(aws):
    """A `ray up` cluster as EC2 sees it: tagged head and spot workers, plus a stranger."""
    ec2 = aws.client("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]

    def launch(tags, market=None):
        kwargs = {"ImageId": image, "MinCount": 1, "MaxCount": 1, "InstanceType": "r7i.2xlarge"}
        if market:
            kwargs["InstanceMarketOptions"] = {"MarketType": market}
        if tags:
            kwargs["TagSpecifications"] = [
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ]
        return ec2.run_instances(**kwargs)["Instances"][0]

    ray = {"ray-cluster-name": "ray-on-aws"}
    head = launch({**ray, "ray-node-type": "head", "ray-user-node-type": "head_node"})
    worker = launch(
        {**ray, "ray-node-type": "worker", "ray-user-node-type": "x86_spot_worker"}, "spot"
    )
    stranger = launch({"Name": "not-ray"}, "spot")
    return {"head": head, "worker": worker, "stranger": stranger}


@pytest.fixture
def ledger_table(aws, request):
    dynamodb = aws.client("dynamodb")
    name = f"ledger-{request.node.name[:40]}"
    dynamodb.create_table(**cfn.dynamodb_table_kwargs("LedgerTable", name))
    yield aws.resource("dynamodb").Table(name)
    dynamodb.delete_table(TableName=name)


def test_ec2_resolves_a_tagged_spot_worker_with_its_facts(aws, cluster):
    worker = cluster["worker"]

    found = Ec2Directory(aws.client("ec2")).describe([worker["InstanceId"]])

    instance = found[worker["InstanceId"]]
    assert instance.is_ray_node
    assert not instance.is_head
    assert (instance.cluster, instance.node_type) == ("ray-on-aws", "x86_spot_worker")
    assert instance.lifecycle == "spot"
    assert instance.private_ip == worker["PrivateIpAddress"]
    assert instance.availability_zone == worker["Placement"]["AvailabilityZone"]
    assert instance.instance_type == "r7i.2xlarge"


def test_ec2_tells_head_stranger_and_unknown_apart(aws, cluster):
    head, stranger = cluster["head"]["InstanceId"], cluster["stranger"]["InstanceId"]
    unknown = "i-0123456789abcdef0"

    found = Ec2Directory(aws.client("ec2")).describe([head, stranger, unknown])

    assert found[head].is_head
    assert not found[stranger].is_ray_node
    assert unknown not in found


def test_ec2_finds_the_running_head_of_a_cluster(aws, cluster):
    directory = Ec2Directory(aws.client("ec2"))

    assert directory.head_of("ray-on-aws").instance_id == cluster["head"]["InstanceId"]
    assert directory.head_of("no-such-cluster") is None


def entry(key="i-0a1b2c3d4e5f60001#spot-interruption", event_id="e-1", at=NOW):
    return LedgerEntry(
        key=key,
        instance_id=key.split("#")[0],
        kind="spot-interruption",
        status=Status.IN_PROGRESS,
        recorded_at=iso(at),
        updated_at=iso(at),
        event_ids=(event_id,),
    )


def test_dynamodb_ledger_claims_once_and_counts_duplicates(ledger_table):
    ledger = DynamoDbLedger(ledger_table)
    stale = timedelta(minutes=3)

    first = ledger.claim(entry(), now=NOW, stale_after=stale)
    second = ledger.claim(entry(event_id="e-2"), now=NOW + timedelta(seconds=1), stale_after=stale)

    assert not first.is_duplicate
    assert second.is_duplicate
    stored = ledger.get(first.entry.key)
    assert (stored.deliveries, stored.event_ids) == (2, ("e-1", "e-2"))


def test_dynamodb_ledger_reclaims_a_failed_entry_as_a_new_attempt(ledger_table):
    ledger = DynamoDbLedger(ledger_table)
    stale = timedelta(minutes=3)
    claim = ledger.claim(entry(), now=NOW, stale_after=stale)
    ledger.save(claim.entry.with_outcome(Status.FAILED, NOW, reason="head unreachable"))

    again = ledger.claim(entry(event_id="e-1"), now=NOW + timedelta(seconds=5), stale_after=stale)

    assert not again.is_duplicate
    assert again.entry.attempts == 2


def test_dynamodb_ledger_answers_which_interruptions_hit_a_job_by_one_query(ledger_table):
    ledger = DynamoDbLedger(ledger_table)
    for n, job in enumerate(["01000000", "02000000"]):
        e = entry(key=f"i-0a1b2c3d4e5f6000{n}#spot-interruption")
        ledger.save(
            e.with_outcome(
                Status.DRAINED,
                NOW,
                cluster="ray-on-aws",
                impacted_jobs=({"job_id": job, "tasks_running": 2, "running_s": 1.5},),
            )
        )

    hits = ledger.job_hits("ray-on-aws#02000000")

    assert [h.instance_id for h in hits] == ["i-0a1b2c3d4e5f60001"]
    assert hits[0].impact["running_s"] == 1.5
    assert len(ledger.entries()) == 2


def test_dynamodb_ledger_holds_each_verdict_and_its_real_outcome_side_by_side(ledger_table):
    ledger = DynamoDbLedger(ledger_table)
    e = entry(key="i-0a1b2c3d4e5f60007#spot-interruption")
    ledger.save(
        e.with_outcome(
            Status.DRAINED,
            NOW,
            cluster="ray-on-aws",
            impacted_jobs=({"job_id": "07000000", "verdict": "will-recover"},),
        )
    )

    written = record_verdict_outcomes(
        {
            "verdict_outcomes": [
                {
                    "notice_id": e.key,
                    "job_id": "07000000",
                    "verdict": "will-recover",
                    "outcome": "recovered",
                    "node_death": "AUTOSCALER_DRAIN_PREEMPTED",
                    "details": ["actor 7b7c: ALIVE, 1 restart(s), 1 free"],
                }
            ]
        },
        ledger,
    )

    (hit,) = ledger.job_hits("ray-on-aws#07000000")
    assert written == 1
    assert hit.impact["verdict"] == "will-recover"
    assert hit.impact["outcome"]["outcome"] == "recovered"
    assert ledger.get(e.key).impacted_jobs[0]["outcome"]["node_death"] == (
        "AUTOSCALER_DRAIN_PREEMPTED"
    )


def ssm_document(aws):
    """The respond document, created in moto from the template's own content."""
    content = cfn.resource("RespondDocument")["Properties"]["Content"]
    step = content["mainSteps"][0]["inputs"]
    step["runCommand"] = [
        cfn.sub(c, {"RayUser": "ec2-user", "RayPython": "/usr/bin/python3"})
        for c in step["runCommand"]
    ]
    ssm = aws.client("ssm")
    name = "spot-responder-respond"
    with contextlib.suppress(ssm.exceptions.DocumentAlreadyExists):
        ssm.create_document(
            Content=json.dumps(content), Name=name, DocumentType="Command", DocumentFormat="JSON"
        )
    return name


def test_ssm_channel_sends_the_request_to_the_head_with_the_document(aws, cluster):
    ssm = aws.client("ssm")
    sent_params = []
    ssm.meta.events.register(
        "provide-client-params.ssm.SendCommand", lambda params, **_: sent_params.append(params)
    )
    channel = SsmClusterChannel(
        ssm, Ec2Directory(aws.client("ec2")), ssm_document(aws), timeout_s=2, poll_s=0.05
    )
    worker = cluster["worker"]["InstanceId"]
    request = build_request(
        "ray-on-aws", [NoticeRequest("k", worker, None, "spot-interruption", "drain", NOW)]
    )

    # moto runs nothing and returns no output: the channel must call that a passing failure.
    with pytest.raises(ChannelUnavailable):
        channel.send("ray-on-aws", request)

    (params,) = sent_params
    assert params["InstanceIds"] == [cluster["head"]["InstanceId"]]
    assert params["DocumentName"] == "spot-responder-respond"
    assert params["Parameters"]["Operation"] == ["respond"]
    assert json.loads(base64.b64decode(params["Parameters"]["Request"][0])) == request
    # and the document accepted it: moto recorded the command under that document
    commands = ssm.list_commands()["Commands"]
    assert any(c["Comment"].endswith(request["request_id"]) for c in commands)


def test_ssm_channel_without_a_head_is_a_passing_failure(aws, cluster):
    channel = SsmClusterChannel(
        aws.client("ssm"), Ec2Directory(aws.client("ec2")), "doc", timeout_s=1, poll_s=0.01
    )
    request = build_request(
        "orphan",
        [NoticeRequest("k", "i-0123456789abcdef0", None, "spot-interruption", "drain", NOW)],
    )

    with pytest.raises(ChannelUnavailable, match="no running head node"):
        channel.send("orphan", request)


def test_failed_record_is_retried_then_dead_lettered_and_the_ledger_says_so(
    aws, cluster, ledger_table
):
    # GIVEN the queue and its dead-letter queue as the template declares them
    sqs = aws.client("sqs")
    queue_props = cfn.resource("NoticeQueue")["Properties"]
    max_receives = int(queue_props["RedrivePolicy"]["maxReceiveCount"])
    dlq_url = sqs.create_queue(QueueName="notices-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue_url = sqs.create_queue(
        QueueName="notices",
        Attributes={
            "VisibilityTimeout": str(queue_props["VisibilityTimeout"]),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives}
            ),
        },
    )["QueueUrl"]
    warning = load_event("spot-interruption-terminate.json")
    warning["detail"]["instance-id"] = cluster["worker"]["InstanceId"]
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(warning))
    # AND a responder on real AWS adapters whose head node never answers (moto runs nothing)
    directory = Ec2Directory(aws.client("ec2"))
    settings = Settings(max_receive_count=max_receives)
    responder = Responder(
        directory=directory,
        channel=SsmClusterChannel(
            aws.client("ssm"), directory, ssm_document(aws), timeout_s=0.2, poll_s=0.05
        ),
        ledger=DynamoDbLedger(ledger_table),
        settings=settings,
    )
    retry = SqsRetryDelay(sqs, delay_s=0)

    # WHEN the Lambda polls the queue as the event source mapping would
    deliveries = 0
    for _ in range(max_receives + 2):
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"]
        ).get("Messages", [])
        if not messages:
            break
        deliveries += 1
        event = {"Records": [lambda_record(m, queue_url, sqs) for m in messages]}
        response, _ = respond(event, None, responder, retime=True, retry_delay=retry)
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        for m in messages:
            if m["MessageId"] not in failed:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])

    # THEN it was retried up to the limit, ended in the DLQ, and the ledger says so
    assert deliveries == max_receives
    dead = sqs.receive_message(QueueUrl=dlq_url).get("Messages", [])
    assert len(dead) == 1
    stored = DynamoDbLedger(ledger_table).get(
        f"{warning['detail']['instance-id']}#spot-interruption"
    )
    assert stored.status is Status.DEAD_LETTERED
    assert stored.attempts == max_receives


def lambda_record(message, queue_url, sqs):
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message["Attributes"],
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": arn,
        "awsRegion": "us-west-2",
    }


def test_scheduled_reconcile_reaches_every_cluster_with_a_head_and_never_raises(
    aws, cluster, ledger_table, monkeypatch
):
    from spot_responder.handlers import aws as factory
    from spot_responder.handlers import reconcile as handler

    monkeypatch.setenv("LEDGER_TABLE", ledger_table.name)  # as the template's Globals set it
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("RESPOND_DOCUMENT", ssm_document(aws))
    monkeypatch.setenv("COMMAND_TIMEOUT_SECONDS", "5")
    factory.clear()
    sent = []
    try:
        channel = factory.channel()
        channel._poll_s = 0.05
        channel._ssm.meta.events.register(
            "provide-client-params.ssm.SendCommand", lambda params, **_: sent.append(params)
        )

        result = handler.lambda_handler({}, LambdaContext())
    finally:
        factory.clear()

    # moto runs no command, so the head "fails": reported per cluster, not raised
    (reconciled,) = result["clusters"]
    assert reconciled["cluster"] == "ray-on-aws"
    assert reconciled["error"]
    (params,) = sent
    assert params["Parameters"]["Operation"] == ["reconcile"]
    assert params["InstanceIds"] == [cluster["head"]["InstanceId"]]


class AnsweringSsm:
    """An SSM client whose head node answers every respond command (moto runs none)."""

    def __init__(self, ssm):
        self._ssm = ssm
        self.commands = []

    def __getattr__(self, name):
        return getattr(self._ssm, name)

    def send_command(self, **kwargs):
        self.commands.append(json.loads(base64.b64decode(kwargs["Parameters"]["Request"][0])))
        return self._ssm.send_command(**kwargs)

    def get_command_invocation(self, CommandId, InstanceId):
        request = self._request_of(CommandId)
        results = [
            {
                "notice_id": n["notice_id"],
                "instance_id": n["instance_id"],
                "outcome": "drained",
                "ray_node_id": None,
                "message": "x" * 500,
                "impacted_jobs": [],
            }
            for n in request["notices"]
        ]
        answer = {
            "version": 1,
            "cluster": request["cluster"],
            "request_id": request["request_id"],
            "results": results,
        }
        return {"Status": "Success", "ResponseCode": 0, "StandardOutputContent": json.dumps(answer)}

    def _request_of(self, command_id):
        for command in self._ssm.list_commands(CommandId=command_id)["Commands"]:
            return json.loads(base64.b64decode(command["Parameters"]["Request"][0]))
        raise AssertionError(command_id)


def test_a_large_request_is_split_so_each_answer_fits_the_ssm_output_limit(aws, cluster):
    from spot_responder.adapters.channel_ssm import NOTICES_PER_COMMAND

    ssm = AnsweringSsm(aws.client("ssm"))
    channel = SsmClusterChannel(
        ssm, Ec2Directory(aws.client("ec2")), ssm_document(aws), timeout_s=5, poll_s=0.01
    )
    notices = [
        NoticeRequest(f"k{n}", f"i-0a1b2c3d4e5f6{n:04x}", None, "spot-interruption", "drain", NOW)
        for n in range(50)
    ]

    response = channel.send("ray-on-aws", build_request("ray-on-aws", notices))

    assert len(ssm.commands) == 3
    assert max(len(c["notices"]) for c in ssm.commands) == NOTICES_PER_COMMAND
    assert sorted(response.results) == sorted(f"k{n}" for n in range(50))


@pytest.mark.parametrize(
    ("ping", "version", "raised", "words"),
    [
        ("ConnectionLost", "3.3.3572.0", ChannelUnavailable, "is ConnectionLost"),
        ("Online", "3.2.582.0", AgentTooOld, "older than 3.3.2746.0"),
    ],
    ids=["agent offline", "agent too old"],
)
def test_ssm_channel_checks_the_head_agent_before_sending(
    aws, cluster, ping, version, raised, words
):
    head = cluster["head"]["InstanceId"]
    aws.agents.ping[head], aws.agents.versions[head] = ping, version
    ssm = aws.client("ssm")
    sent = []
    ssm.meta.events.register("provide-client-params.ssm.SendCommand", lambda **kw: sent.append(1))
    channel = SsmClusterChannel(ssm, Ec2Directory(aws.client("ec2")), "doc", timeout_s=5)
    worker = cluster["worker"]["InstanceId"]
    request = build_request(
        "ray-on-aws", [NoticeRequest("k", worker, None, "spot-interruption", "drain", NOW)]
    )
    try:
        with pytest.raises(raised, match=words):
            channel.send("ray-on-aws", request)
    finally:
        del aws.agents.ping[head], aws.agents.versions[head]
    assert sent == []  # nothing was sent to wait for


def test_an_agent_too_old_is_recorded_and_alarmed_not_rejected_or_retried(aws, cluster, tmp_path):
    from spot_responder.adapters.ledger_sqlite import SqliteLedger
    from spot_responder.observability import metrics

    head = cluster["head"]["InstanceId"]
    aws.agents.versions[head] = "3.1.1446.0"
    directory = Ec2Directory(aws.client("ec2"))
    channel = SsmClusterChannel(aws.client("ssm"), directory, "doc", timeout_s=5)
    ledger = SqliteLedger(tmp_path / "ledger.sqlite3")
    responder = Responder(directory=directory, channel=channel, ledger=ledger, settings=Settings())
    event = load_event("spot-interruption-terminate.json")
    event["detail"]["instance-id"] = cluster["worker"]["InstanceId"]
    try:
        metrics.clear_metrics()
        response, report = respond(sqs_event(event), None, responder, retime=True)
        emitted = set(metrics.metric_set)
        metrics.clear_metrics()
    finally:
        del aws.agents.versions[head]
        ledger.close()

    assert response == {"batchItemFailures": []}
    assert list(report.statuses.values()) == [RecordStatus.HANDLED]
    (item,) = report.notices
    assert item.entry.status is Status.AGENT_TOO_OLD
    assert "HeadAgentTooOld" in emitted
