"""A moto server on a free local port, spoken to over real HTTP."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3

REGION = "us-west-2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto server with nothing in it.

    moto keeps its state per process, not per server: every server starts from a reset,
    so that suites cannot see each other's queues, tables or instances.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(reset, timeout=10).close()
        yield endpoint
    finally:
        server.stop()


class Aws:
    """boto3 clients bound to one moto server. Its SSM clients share one `SsmAgents`."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.session = boto3.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        self.agents = SsmAgents()

    def client(self, service: str, **kwargs: Any) -> Any:
        made = self.session.client(service, endpoint_url=self.endpoint, **kwargs)
        if service == "ssm":
            self.agents.serve(made)
        return made

    def resource(self, service: str) -> Any:
        return self.session.resource(service, endpoint_url=self.endpoint)


class SsmAgents:
    """The SSM Agents of the test's instances, for the two SSM calls moto does not serve:
    DescribeInstanceInformation answers each instance's PingStatus and AgentVersion (Online
    and a current agent unless told otherwise), CancelCommand is recorded. Served as
    botocore `before-call` hooks on SSM clients, so every other call still goes to moto
    over HTTP."""

    CURRENT_AGENT = "3.3.3572.0"

    def __init__(self) -> None:
        self.ping: dict[str, str] = {}
        self.versions: dict[str, str] = {}
        self.cancelled: list[tuple[str, str]] = []
        self.asked: list[str] = []

    def serve(self, ssm: Any) -> None:
        ssm.meta.events.register("before-call.ssm.DescribeInstanceInformation", self._describe)
        ssm.meta.events.register("before-call.ssm.CancelCommand", self._cancel)

    def _describe(self, params: dict[str, Any], **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        body = params["body"]
        text = body.decode() if isinstance(body, bytes) else str(body)
        (instance_id,) = json.loads(text)["Filters"][0]["Values"]
        self.asked.append(instance_id)
        info = {
            "InstanceId": instance_id,
            "PingStatus": self.ping.get(instance_id, "Online"),
            "AgentVersion": self.versions.get(instance_id, self.CURRENT_AGENT),
            "PlatformType": "Linux",
        }
        return AWSResponse("https://ssm.invalid", 200, {}, None), {
            "InstanceInformationList": [info]
        }

    def _cancel(self, params: dict[str, Any], **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        body = params["body"]
        request = json.loads(body.decode() if isinstance(body, bytes) else str(body))
        for instance_id in request.get("InstanceIds", []):
            self.cancelled.append((request["CommandId"], instance_id))
        return AWSResponse("https://ssm.invalid", 200, {}, None), {}
