"""The built Lambda package itself handles the sample batch, against moto over HTTP.

    python -m tests.built_package PACKAGE_DIR PYTHON3.12

PACKAGE_DIR is what `sam build` produced for the responder (functions/Makefile, here for
this machine's architecture). It runs in a clean Python 3.12 process: isolated (-I), no
site-packages (-S), only PACKAGE_DIR on its path, and the environment template.yaml gives
the function (Globals, resolved to the moto resources made from the template) plus what
the Lambda runtime supplies (region, credentials, here the moto endpoint). It handles
events/sqs-batch-spot-interruption.json, sent now, its instance id swapped for a spot worker of a
`ray up`-tagged cluster in moto. moto runs no SSM command, so the head never answers: the
record must come back for retry, the ledger saying why. Exit 0 when it did.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests import cfn
from tests.aws import REGION, Aws, moto_server
from tests.support import load_event

HANDLER = cfn.resource("ResponderFunction")["Properties"]["Handler"]

CHILD = """
import importlib, json, sys, time
sys.path.insert(0, sys.argv[1])
module, _, name = sys.argv[2].rpartition(".")
handler = getattr(importlib.import_module(module), name)
class Context:
    function_name = "spot-responder"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-west-2:123456789012:function:spot-responder"
    aws_request_id = "built-package-check"
    deadline = time.monotonic() + float(sys.argv[3])
    def get_remaining_time_in_millis(self):
        return int((self.deadline - time.monotonic()) * 1000)
event = json.load(sys.stdin)
print(json.dumps({"response": handler(event, Context()), "path": sys.path,
                  "pydantic": importlib.import_module("pydantic").__file__}))
"""


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def environment(aws: Aws, names: dict[str, str]) -> dict[str, str]:
    """The function's environment as template.yaml declares it, resolved for moto."""
    variables = cfn.template()["Globals"]["Function"]["Environment"]["Variables"]
    parameters = cfn.template()["Parameters"]

    def resolve(value: Any) -> str:
        if isinstance(value, dict) and "Fn::Join" in value:  # a CommaDelimitedList's value
            separator, parts = value["Fn::Join"]
            return separator.join(resolve(part) for part in as_list(parts))
        if isinstance(value, dict) and "Ref" in value:
            ref = value["Ref"]
            if ref in names:
                return names[ref]
            if ref == "AWS::AccountId":
                return "123456789012"
            return str(parameters[ref].get("Default", ""))
        return str(value)

    resolved = {key: resolve(value) for key, value in variables.items()}
    return resolved | {
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": aws.endpoint,
        "POWERTOOLS_TRACE_DISABLED": "true",
        "PATH": "/usr/bin:/bin",
    }


def resources(aws: Aws) -> tuple[dict[str, str], str]:
    """Ledger table, queues and a cluster in moto (moto runs SendCommand without the
    document); the resource names the environment refers to, and the worker's id."""
    dynamodb = aws.client("dynamodb")
    dynamodb.create_table(**cfn.dynamodb_table_kwargs("LedgerTable", "ledger"))
    sqs = aws.client("sqs")
    dlq = sqs.create_queue(QueueName="notices-dlq")["QueueUrl"]
    sqs.create_queue(QueueName="spot-responder-notices")
    ec2 = aws.client("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]

    def launch(kind: str, market: dict[str, Any]) -> str:
        tags = [
            {"Key": "ray-cluster-name", "Value": "ray-on-aws"},
            {"Key": "ray-node-type", "Value": kind},
            {"Key": "ray-user-node-type", "Value": f"{kind}_type"},
        ]
        return str(
            ec2.run_instances(
                ImageId=image,
                MinCount=1,
                MaxCount=1,
                InstanceType="r7i.2xlarge",
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
                **market,
            )["Instances"][0]["InstanceId"]
        )

    launch("head", {})
    worker = launch("worker", {"InstanceMarketOptions": {"MarketType": "spot"}})
    names = {"LedgerTable": "ledger", "RespondDocument": "respond", "NoticeDeadLetterQueue": dlq}
    return names, worker


def main(package: str, python312: str) -> int:
    # moto answers the calls it lacks (DescribeInstanceInformation) with a 500 and a logged
    # traceback; the channel goes on without the agent check, which is what is tested here.
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
    with moto_server() as endpoint:
        aws = Aws(endpoint)
        names, worker = resources(aws)
        event = load_event("sqs-batch-spot-interruption.json")
        (record,) = event["Records"]
        body = json.loads(record["body"])
        body["detail"]["instance-id"] = worker
        body["time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # a fresh warning
        record["body"] = json.dumps(body)
        timeout = str(cfn.resource("ResponderFunction")["Properties"]["Timeout"])
        done = subprocess.run(
            [python312, "-I", "-S", "-c", CHILD, package, HANDLER, timeout],
            input=json.dumps(event),
            capture_output=True,
            text=True,
            env=environment(aws, names),
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            print(done.stdout, done.stderr, sep="\n", file=sys.stderr)
            return 1
        out = json.loads(done.stdout.strip().splitlines()[-1])
        entry = (
            aws.resource("dynamodb")
            .Table("ledger")
            .get_item(Key={"pk": f"{worker}#spot-interruption", "sk": "notice"})
            .get("Item")
        )
    site = [p for p in out["path"] if "site-packages" in p]
    print(f"  handler {HANDLER} from {package}; pydantic from {out['pydantic']}")
    print(f"  response: {out['response']}")
    print(f"  ledger: {None if entry is None else (entry['status'], entry['reason'][:120])}")
    failures = [
        site and f"site-packages on the path: {site}",
        not out["pydantic"].startswith(package) and "pydantic did not come from the package",
        out["response"] != {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
        and "the record was not given back for retry",
        (entry is None or entry["status"] != "failed") and "the ledger does not say it failed",
    ]
    for failure in filter(None, failures):
        print(f"built package: {failure}", file=sys.stderr)
    return 1 if any(failures) else 0


if __name__ == "__main__":
    sys.exit(main(str(Path(sys.argv[1]).resolve()), sys.argv[2]))
