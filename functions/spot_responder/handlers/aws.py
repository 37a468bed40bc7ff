"""The AWS adapters the handlers use, built once per Lambda container (cold start)."""

from __future__ import annotations

from functools import lru_cache

import boto3

from spot_responder.adapters.channel_ssm import SsmClusterChannel
from spot_responder.adapters.instances_ec2 import Ec2Directory
from spot_responder.adapters.ledger_dynamodb import DynamoDbLedger
from spot_responder.adapters.retry_sqs import SqsRetryDelay
from spot_responder.settings import Settings


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()


@lru_cache(maxsize=1)
def directory() -> Ec2Directory:
    return Ec2Directory(boto3.client("ec2"))


@lru_cache(maxsize=1)
def channel() -> SsmClusterChannel:
    document = settings().respond_document
    if not document:
        raise RuntimeError("RESPOND_DOCUMENT must be set")
    return SsmClusterChannel(
        boto3.client("ssm"), directory(), document, timeout_s=settings().command_timeout_s
    )


@lru_cache(maxsize=1)
def ledger() -> DynamoDbLedger:
    table = settings().ledger_table
    if not table:
        raise RuntimeError("LEDGER_TABLE must be set")
    return DynamoDbLedger(boto3.resource("dynamodb").Table(table))


@lru_cache(maxsize=1)
def retry_delay() -> SqsRetryDelay:
    return SqsRetryDelay(boto3.client("sqs"), settings().retry_delay_s)


def clear() -> None:
    """Forget what was built (tests that change the environment)."""
    for factory in (settings, directory, channel, ledger, retry_delay):
        factory.cache_clear()
