"""Lambda, on a schedule: run `reconcile` on the head node of every served Ray cluster."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from spot_responder.budget import Budget
from spot_responder.handlers import aws
from spot_responder.observability import logger, metrics, tracer
from spot_responder.reconcile import reconcile


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = reconcile(
        aws.directory().clusters_with_heads(),
        aws.channel(),
        aws.settings(),
        budget=Budget.of(context),
        ledger=aws.ledger(),
    )
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
