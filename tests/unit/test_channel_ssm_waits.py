"""How the SSM channel waits for a head that does not answer, and what the AWS clients allow.

A fake SSM whose command never finishes, on a fake clock: the waits are counted, not slept.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from spot_responder.adapters.channel_ssm import SsmClusterChannel
from spot_responder.channel import ChannelUnavailable
from spot_responder.contract import NoticeRequest, build_request
from spot_responder.handlers import aws
from spot_responder.instances import Instance

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)

HEAD = "i-0a1b2c3d4e5f60000"


@dataclass
class Clock:
    now: float = 0.0
    slept: list[float] = field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclass
class StuckSsm:
    """A head whose agent is online and whose command never finishes."""

    clock: Clock
    polls: list[float] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def describe_instance_information(self, **_: Any) -> dict[str, Any]:
        return {"InstanceInformationList": [{"PingStatus": "Online", "AgentVersion": "3.3.3000.0"}]}

    def send_command(self, **_: Any) -> dict[str, Any]:
        return {"Command": {"CommandId": "cmd-1"}}

    def get_command_invocation(self, **_: Any) -> dict[str, Any]:
        self.polls.append(self.clock.now)
        return {"Status": "InProgress"}

    def cancel_command(self, CommandId: str, **_: Any) -> dict[str, Any]:
        self.cancelled.append(CommandId)
        return {}


class OneHead:
    def head_of(self, cluster: str) -> Instance:
        return Instance(HEAD, cluster=cluster, node_kind="head", state="running")


def test_a_head_that_never_answers_is_polled_with_back_off_then_cancelled() -> None:
    clock = Clock()
    ssm = StuckSsm(clock)
    channel = SsmClusterChannel(
        ssm, OneHead(), "doc", timeout_s=30, sleep=clock.sleep, clock=lambda: clock.now
    )  # type: ignore[arg-type]
    request = build_request(
        "c", [NoticeRequest("k", "i-1", None, "spot-interruption", "drain", NOW)]
    )

    with pytest.raises(ChannelUnavailable, match="cancelled"):
        channel.call("c", request)

    # 30 s of waiting cost a couple of dozen polls, not one every half second (60), the
    # first within a quarter second; and the command was cancelled when given up on
    assert ssm.polls[0] == pytest.approx(0.25)
    assert len(ssm.polls) <= 20
    gaps = [b - a for a, b in zip(ssm.polls, ssm.polls[1:], strict=False)]
    assert gaps[:-1] == sorted(gaps[:-1])  # growing, the last one cut at the deadline
    assert max(gaps) <= 2.0
    assert clock.now == pytest.approx(30, abs=0.01)
    assert ssm.cancelled == ["cmd-1"]


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An HTTP endpoint that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()


def test_an_aws_endpoint_that_never_answers_fails_in_seconds_not_minutes(
    silent_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the Lambda's clients, against an endpoint that hangs: boto3's defaults (60 s read
    # timeout, retried) would outlive the 40 s function
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    config = aws.CLIENT_CONFIG.merge(aws.Config(read_timeout=1))
    client = aws.boto3.client("sqs", endpoint_url=silent_endpoint, config=config)
    started = time.monotonic()

    with pytest.raises(Exception, match="Read timeout"):
        client.list_queues()

    took = time.monotonic() - started
    print(f"\nsilent endpoint: gave up after {took:.1f} s (3 attempts of a 1 s read timeout)")
    # the Lambda's own: short timeouts, three attempts in all, adaptive rate limiting
    assert (aws.CLIENT_CONFIG.connect_timeout, aws.CLIENT_CONFIG.read_timeout) == (3, 8)
    assert aws.CLIENT_CONFIG.retries == {"mode": "adaptive", "total_max_attempts": 3}
