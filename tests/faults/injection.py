"""Faults to inject: a settable clock, a dying Lambda, throttled AWS calls, stand-in commands."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.awsrequest import AWSResponse

from spot_responder.contract import ClusterResponse
from spot_responder.ledger import LedgerEntry

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FakeClock:
    """One clock for the responder (`now`), the SSM channel (`monotonic`, `sleep`) and tests."""

    def __init__(self, start: datetime) -> None:
        self.moment = start

    def now(self) -> datetime:
        return self.moment

    def monotonic(self) -> float:
        return (self.moment - EPOCH).total_seconds()

    def sleep(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)

    def advance(self, by: timedelta) -> None:
        self.moment += by


class LambdaTimedOut(BaseException):
    """The Lambda runtime stopping the invocation: no `except Exception` catches it."""


class DyingChannel:
    """A cluster channel that lets the invocation die when it is asked about one cluster."""

    def __init__(self, channel: Any, dies_on: str) -> None:
        self.channel = channel
        self.dies_on: str | None = dies_on

    def send(self, cluster: str, request: dict[str, Any]) -> ClusterResponse:
        if cluster == self.dies_on:
            raise LambdaTimedOut(f"timed out while waiting for {cluster}")
        response: ClusterResponse = self.channel.send(cluster, request)
        return response


class DyingLedger:
    """A ledger whose invocation dies on its n-th outcome write (claims pass)."""

    def __init__(self, ledger: Any, dies_on_save: int) -> None:
        self.ledger = ledger
        self.dies_on_save: int | None = dies_on_save
        self.saves = 0

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        return self.ledger.claim(*args, **kwargs)

    def save(self, entry: LedgerEntry) -> None:
        self.saves += 1
        if self.dies_on_save is not None and self.saves == self.dies_on_save:
            raise LambdaTimedOut("timed out while writing outcomes")
        self.ledger.save(entry)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ledger, name)


class Throttle:
    """A botocore `before-call` hook: chosen calls answer as if throttled after the SDK's
    own retries (the error reaches the adapter, as under sustained throttling)."""

    def __init__(
        self,
        client: Any,
        service: str,
        operation: str,
        *,
        code: str = "ProvisionedThroughputExceededException",
        when: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> None:
        self.code = code
        self.when = when
        self.on = False
        self.count = 0
        client.meta.events.register(f"before-call.{service}.{operation}", self)

    def __call__(self, params: dict[str, Any], **_: Any) -> Any:
        if not self.on or not self.when(params):
            return None
        self.count += 1
        error = {
            "Error": {"Code": self.code, "Message": "Rate of requests exceeds the allowed"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }
        return AWSResponse("https://throttled.invalid", 400, {}, None), error


def dynamodb_item(params: dict[str, Any]) -> dict[str, Any]:
    """The item of a serialized PutItem request (as a before-call hook sees it)."""
    body = json.loads(params["body"])
    item: dict[str, Any] = body.get("Item", {})
    return item


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Any:
        yield self.body


class TransientThrottle:
    """A botocore `before-send` hook: the first `times` HTTP sends come back throttled, so
    the SDK's own retry (with back-off) sees them."""

    def __init__(self, client: Any, operation: str, times: int) -> None:
        self.left = times
        self.count = 0
        client.meta.events.register(f"before-send.dynamodb.{operation}", self)

    def __call__(self, request: Any, **_: Any) -> Any:
        if self.left <= 0:
            return None
        self.left -= 1
        self.count += 1
        body = json.dumps(
            {
                "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                "message": "Rate of requests exceeds the allowed throughput.",
            }
        ).encode()
        return AWSResponse(request.url, 400, {"x-amzn-requestid": "throttled"}, _Raw(body))


def stand_in_python(tmp_path: Path, name: str, script: str) -> str:
    """An executable to pass as LocalClusterChannel's `python`: it ignores its arguments
    (`-m ray_hooks respond --address ...`) and does what `script` (sh) says."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)
