"""An unsupported-ray answer is counted once per notice, and the stack alarms on the count."""

from __future__ import annotations

from spot_responder.handlers import responder as handler
from spot_responder.ledger import LedgerEntry, Status
from spot_responder.observability import metrics
from spot_responder.responder import BatchReport, NoticeReport
from tests import cfn


def rejected(reason: str) -> NoticeReport:
    entry = LedgerEntry(
        key="i-0a1b2c3d4e5f60001#spot-interruption",
        instance_id="i-0a1b2c3d4e5f60001",
        kind="spot-interruption",
        status=Status.REJECTED,
        recorded_at="2026-12-01T10:00:00.000Z",
        updated_at="2026-12-01T10:00:01.000Z",
        cluster="ray-on-aws",
        reason=reason,
    )
    return NoticeReport("message-1", entry)


def counted(report: BatchReport) -> float:
    metrics.clear_metrics()
    handler._log_and_measure(report)
    values = metrics.metric_set.get("UnsupportedRay", {}).get("Value", [])
    metrics.clear_metrics()
    return float(sum(values))


def test_a_notice_rejected_as_unsupported_ray_is_counted_once() -> None:
    report = BatchReport(
        notices=[rejected("unsupported-ray: Ray 2.47.0 on the head node (supported >=2.50.0)")]
    )

    assert counted(report) == 1


def test_any_other_refusal_is_not_counted_as_unsupported_ray() -> None:
    report = BatchReport(notices=[rejected("head node refused the request: bad field")])

    assert counted(report) == 0


def test_the_stack_alarms_on_unsupported_ray_to_the_alarm_topic() -> None:
    alarm = cfn.resource("UnsupportedRayAlarm")["Properties"]

    assert (alarm["Namespace"], alarm["MetricName"]) == ("SpotResponder", "UnsupportedRay")
    assert alarm["Threshold"] == 1
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
