"""Lambda: SQS batch of EventBridge notices → Responder → partial batch response."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes import SQSEvent
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from spot_responder.adapters.retry_sqs import SqsDeadLetter, SqsRetryDelay
from spot_responder.budget import Budget
from spot_responder.contract import UNSUPPORTED_RAY
from spot_responder.handlers import aws
from spot_responder.ledger import LedgerEntry, Status, parse_iso
from spot_responder.observability import logger, metrics, tracer
from spot_responder.responder import BatchReport, InboundRecord, RecordStatus, Responder

# Every record fails alike when a cluster is down: report them all for retry rather
# than failing the invocation.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


class NoticeNotHandledYet(Exception):
    """Raised for a record that failed for a passing reason: the queue delivers it again."""


def aws_responder() -> Responder:
    return Responder(
        directory=aws.directory(),
        channel=aws.channel(),
        ledger=aws.ledger(),
        settings=aws.settings(),
        rearm=aws.rearm(),
    )


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
def lambda_handler(
    event: dict[str, Any],
    context: LambdaContext,
    responder: Responder | None = None,
    retry_delay: SqsRetryDelay | None = None,
    dead_letter: SqsDeadLetter | None = None,
) -> dict[str, Any]:
    response, _ = respond(
        event,
        context,
        responder or aws_responder(),
        retry_delay=retry_delay or aws.retry_delay(),
        dead_letter=dead_letter or aws.dead_letter(),
    )
    return response


def respond(
    event: dict[str, Any],
    context: LambdaContext | None,
    responder: Responder,
    *,
    retime: bool = False,
    retry_delay: SqsRetryDelay | None = None,
    dead_letter: SqsDeadLetter | None = None,
) -> tuple[dict[str, Any], BatchReport]:
    """The whole handler, also used by the local replay."""
    records = [
        InboundRecord(
            message_id=record.message_id,
            body=record.body,
            receive_count=int(record.attributes.approximate_receive_count or "1"),
        )
        for record in SQSEvent(event).records
    ]
    budget = None if context is None else Budget.of(context)
    report = responder.handle(records, retime=retime, budget=budget)
    if dead_letter is not None:
        _dead_letter(event, report, dead_letter)
    _log_and_measure(report)

    def settle(record: SQSRecord) -> None:
        if report.statuses.get(record.message_id) is RecordStatus.RETRY:
            raise NoticeNotHandledYet(report.reasons.get(record.message_id, "not handled"))

    response = process_partial_response(
        event=event, record_handler=settle, processor=processor, context=context
    )
    if retry_delay is not None:
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        retry_delay.schedule(r for r in event["Records"] if r["messageId"] in failed)
    return dict(response), report


def _dead_letter(event: dict[str, Any], report: BatchReport, dead_letter: SqsDeadLetter) -> None:
    """Records given up on go to the dead-letter queue; one that cannot is retried."""
    wanted = set(report.to_dead_letter())
    if not wanted:
        return
    records = [r for r in event["Records"] if r["messageId"] in wanted]
    for message_id in wanted - dead_letter.send(records, report.reasons):
        report.statuses[message_id] = RecordStatus.RETRY


COUNTERS = {
    Status.DRAINED: "NodesDrained",
    Status.ALERTED: "HeadNodeNotices",
    Status.REJECTED: "NoticesRejected",
    Status.IGNORED: "NoticesIgnored",
    Status.FAILED: "DrainFailures",
    Status.DEAD_LETTERED: "DrainFailures",
    Status.AGENT_TOO_OLD: "HeadAgentTooOld",
}


def _measure(entry: LedgerEntry) -> None:
    """The metrics of one notice handled (not a duplicate)."""
    metrics.add_metric("Notices", MetricUnit.Count, 1)
    if entry.status in COUNTERS:
        metrics.add_metric(COUNTERS[entry.status], MetricUnit.Count, 1)
    if entry.status is Status.REJECTED and entry.reason.startswith(UNSUPPORTED_RAY):
        metrics.add_metric("UnsupportedRay", MetricUnit.Count, 1)
    metrics.add_metric("ImpactedJobs", MetricUnit.Count, len(entry.impacted_jobs))
    if entry.replacement and entry.replacement.get("status") == "requested":
        metrics.add_metric("ReplacementsRequested", MetricUnit.Count, 1)
    if entry.drain_issued_at and entry.notice_time:
        latency = parse_iso(entry.drain_issued_at) - parse_iso(entry.notice_time)
        metrics.add_metric(
            "DrainLatencyMs", MetricUnit.Milliseconds, latency.total_seconds() * 1000
        )


def _log_and_measure(report: BatchReport) -> None:
    for item in report.notices:
        entry = item.entry
        logger.set_correlation_id(entry.event_ids[-1] if entry.event_ids else item.message_id)
        fields = {"notice": entry.key, "status": entry.status.value, "cluster": entry.cluster}
        if item.duplicate:
            metrics.add_metric("DuplicateNotices", MetricUnit.Count, 1)
            logger.info("duplicate notice: already handled", extra=fields)
            continue
        _measure(entry)
        if entry.status is Status.AGENT_TOO_OLD:
            logger.error(f"head node cannot run the document: {entry.reason}", extra=fields)
        elif entry.status is Status.ALERTED:
            logger.error(f"HEAD NODE notice, not drained: {entry.reason}", extra=fields)
        elif entry.status in {Status.FAILED, Status.DEAD_LETTERED, Status.REJECTED}:
            logger.warning(f"notice not handled: {entry.reason}", extra=fields)
        else:
            logger.info(f"notice {entry.status.value}: {entry.reason}", extra=fields)
    if report.cluster_failures:
        metrics.add_metric("ClusterCallFailures", MetricUnit.Count, report.cluster_failures)
    logger.set_correlation_id(None)
