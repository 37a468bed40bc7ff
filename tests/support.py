"""Test helpers shared across suites: sample events and in-memory ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spot_responder.channel import ChannelUnavailable, ClusterRefused
from spot_responder.contract import ClusterResponse, parse_response
from spot_responder.instances import Instance
from spot_responder.responder import InboundRecord

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"

X86_WORKER = "i-0a1b2c3d4e5f60001"
ARM_WORKER = "i-0a1b2c3d4e5f60002"
HEAD = "i-0d0d0d0d0d0d0d0d0"
NOT_RAY = "i-0fedcba9876543210"


def spot_responder(
    *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 240
) -> subprocess.CompletedProcess[str]:
    """`spot-responder ARGS` as a user runs it, in a process of its own. `env` is added to
    this environment, from which RAY_ADDRESS is left out (only --ray-address picks a cluster)."""
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "spot_responder.cli.main", *args],
        capture_output=True,
        text=True,
        env=environment | dict(env or {}),
        timeout=timeout_s,
        check=False,
    )


def load_event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def record(body: dict[str, Any] | str, *, message_id: str | None = None, receives: int = 1):
    text = body if isinstance(body, str) else json.dumps(body)
    return InboundRecord(message_id or str(uuid.uuid4()), text, receives)


def sqs_event(*bodies: dict[str, Any] | str, receives: int = 1) -> dict[str, Any]:
    """An SQS batch exactly as Lambda hands it to the handler."""
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "handle",
                "body": body if isinstance(body, str) else json.dumps(body),
                "attributes": {"ApproximateReceiveCount": str(receives)},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-west-2:123456789012:notices",
                "awsRegion": "us-west-2",
            }
            for body in bodies
        ]
    }


def ray_instance(
    instance_id: str, *, cluster: str = "ray-on-aws", kind: str = "worker"
) -> Instance:
    return Instance(
        instance_id=instance_id,
        cluster=cluster,
        node_kind=kind,
        node_type="x86_spot_worker" if kind == "worker" else "head_node",
        private_ip="10.0.1.11",
        availability_zone="us-west-2a",
        instance_type="r7i.2xlarge",
        lifecycle="spot" if kind == "worker" else "on-demand",
        state="running",
    )


class FakeDirectory:
    def __init__(self, *instances: Instance) -> None:
        self.instances = {i.instance_id: i for i in instances}
        self.calls = 0

    def describe(self, instance_ids):
        self.calls += 1
        return {i: self.instances[i] for i in instance_ids if i in self.instances}


@dataclass
class FakeChannel:
    """A head node that drains whatever it is asked to, unless told to fail."""

    failure: Exception | None = None
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    #: What reconcile reports about judged jobs whose node is gone.
    verdict_outcomes: list[dict[str, Any]] = field(default_factory=list)

    def call(self, cluster: str, request: dict[str, Any]) -> dict[str, Any]:
        """Any other operation (reconcile): what was released and what is still wanted."""
        self.requests.append((cluster, request))
        if self.failure is not None:
            raise self.failure
        return {
            "version": 1,
            "cluster": cluster,
            "released": ["r-1"],
            "outstanding": [],
            "verdict_outcomes": list(self.verdict_outcomes),
        }

    def send(self, cluster: str, request: dict[str, Any]) -> ClusterResponse:
        self.requests.append((cluster, request))
        if self.failure is not None:
            raise self.failure
        results = []
        for notice in request["notices"]:
            drain = notice["action"] == "drain"
            if drain:
                self.drained.append(notice["instance_id"])
            results.append(
                {
                    "notice_id": notice["notice_id"],
                    "instance_id": notice["instance_id"],
                    "outcome": "drained" if drain else "analysed",
                    "ray_node_id": "ab" * 28,
                    "node": None,
                    "drain_deadline": notice["drain_deadline"],
                    "drain_issued_at": "2026-11-22T10:00:01.000Z" if drain else None,
                    "message": "ok",
                    "impacted_jobs": [{"job_id": "01000000", "tasks_running": 1}],
                }
            )
        capacity = [
            {
                "notice_id": n["notice_id"],
                "instance_id": n["instance_id"],
                "node_type": "x86_spot_worker_b",
                "market": "spot",
                "status": "requested",
                "reason": f"mode {n['replacement']['mode']}",
            }
            for n in request["notices"]
            if n.get("replacement")
        ]
        return parse_response(
            {
                "version": 1,
                "cluster": cluster,
                "request_id": request["request_id"],
                "ray_version": "2.60.0",
                "results": results,
                "capacity_requests": capacity,
            }
        )


UNREACHABLE = ChannelUnavailable("no running head node tagged for cluster 'ray-on-aws'")
REFUSED = ClusterRefused("ray_hooks refused the request: bad version")


class LambdaContext:
    """What the Lambda runtime passes as `context`, enough for Powertools."""

    function_name = "spot-responder-test"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-west-2:123456789012:function:spot-responder-test"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return 40_000
