"""The AWS adapters the handlers use, built once per Lambda container (cold start)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config

from spot_responder.adapters.channel_ssm import SsmClusterChannel
from spot_responder.adapters.instances_ec2 import Ec2Directory
from spot_responder.adapters.ledger_dynamodb import DynamoDbLedger
from spot_responder.adapters.rearm_scheduler import SchedulerRearm
from spot_responder.adapters.retry_sqs import SqsDeadLetter, SqsRetryDelay
from spot_responder.settings import Settings

# No call may hang on the SDK's 60 s defaults inside a 40 s function: short connect and
# read timeouts, and adaptive retries (client-side rate limiting on throttling) with few
# attempts, since the budget, not the SDK, decides how long a notice may wait.
# Every cluster call of a batch runs in its own thread: one connection each.
CLIENT_CONFIG = Config(
    connect_timeout=3,
    read_timeout=8,
    retries={"mode": "adaptive", "total_max_attempts": 3},
    max_pool_connections=64,
)


def client(service: str) -> Any:
    return boto3.client(service, config=CLIENT_CONFIG)  # type: ignore[call-overload]


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()


@lru_cache(maxsize=1)
def directory() -> Ec2Directory:
    return Ec2Directory(client("ec2"))


@lru_cache(maxsize=1)
def channel() -> SsmClusterChannel:
    document = settings().respond_document
    if not document:
        raise RuntimeError("RESPOND_DOCUMENT must be set")
    return SsmClusterChannel(
        client("ssm"), directory(), document, timeout_s=settings().command_timeout_s
    )


@lru_cache(maxsize=1)
def ledger() -> DynamoDbLedger:
    table = settings().ledger_table
    if not table:
        raise RuntimeError("LEDGER_TABLE must be set")
    return DynamoDbLedger(boto3.resource("dynamodb", config=CLIENT_CONFIG).Table(table))


@lru_cache(maxsize=1)
def retry_delay() -> SqsRetryDelay:
    return SqsRetryDelay(client("sqs"), settings().retry_delay_s)


@lru_cache(maxsize=1)
def dead_letter() -> SqsDeadLetter | None:
    url = settings().dead_letter_queue_url
    return SqsDeadLetter(client("sqs"), url) if url else None


@lru_cache(maxsize=1)
def rearm() -> SchedulerRearm | None:
    configured = settings()
    group, role, queue = (
        configured.rearm_schedule_group,
        configured.rearm_role_arn,
        configured.notice_queue_arn,
    )
    return (
        SchedulerRearm(client("scheduler"), group, role, queue)
        if group and role and queue
        else None
    )


def clear() -> None:
    """Forget what was built (tests that change the environment)."""
    for factory in (settings, directory, channel, ledger, retry_delay, dead_letter, rearm):
        factory.cache_clear()
