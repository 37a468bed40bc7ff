"""Lambda, on a schedule: run `reconcile` on the head node of every served Ray cluster."""

from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from spot_responder.adapters.channel_ssm import SsmClusterChannel
from spot_responder.adapters.instances_ec2 import Ec2Directory
from spot_responder.observability import logger, metrics, tracer
from spot_responder.reconcile import reconcile
from spot_responder.settings import Settings


@lru_cache(maxsize=1)
def aws_parts() -> tuple[Ec2Directory, SsmClusterChannel, Settings]:
    settings = Settings.from_env()
    if not settings.respond_document:
        raise RuntimeError("RESPOND_DOCUMENT must be set")
    directory = Ec2Directory(boto3.client("ec2"))
    channel = SsmClusterChannel(
        boto3.client("ssm"),
        directory,
        settings.respond_document,
        timeout_s=settings.command_timeout_s,
    )
    return directory, channel, settings


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    directory, channel, settings = aws_parts()
    report = reconcile(directory.clusters_with_heads(), channel, settings)
    for item in report.clusters:
        if item.error:
            logger.warning(f"reconcile failed on {item.cluster}: {item.error}")
        else:
            logger.info(
                f"reconciled {item.cluster}: {item.released} released, "
                f"{item.outstanding} outstanding"
            )
    metrics.add_metric(
        "CapacityRequestsReleased", MetricUnit.Count, sum(c.released for c in report.clusters)
    )
    if report.failures:
        metrics.add_metric("ReconcileFailures", MetricUnit.Count, report.failures)
    return {"clusters": [asdict(c) for c in report.clusters]}
