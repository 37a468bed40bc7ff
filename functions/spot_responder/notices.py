"""EventBridge events in, one normalized Notice out.

A registry keyed by (source, detail-type) holds one small parser per kind of event.
Events of a kind nobody registered are not errors: they yield no notice. Events that
claim a known kind but do not hold what that kind must hold are rejected with a
one-line reason (`NoticeRejected`), because they can never succeed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from aws_lambda_powertools.utilities.parser import ValidationError, parse
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

INSTANCE_ID_PATTERN = r"^i-[0-9a-f]{8}([0-9a-f]{9})?$"
SPOT_NOTICE_WINDOW = timedelta(minutes=2)
MAX_EVENT_BYTES = 256 * 1024  # EventBridge's own limit for one event
MAX_EVENT_ID_CHARS = 128  # EventBridge ids are UUIDs; an id becomes part of ledger keys
# Times outside these are bad input, and the deadline arithmetic must not fall off the calendar.
# AWS Health scheduled changes that take an EC2 instance down (stop, retire, reboot); the
# Health rule in template.yaml matches the same codes. Any other scheduled change yields
# no notice.
INSTANCE_DOWN_CODES = frozenset(
    {
        "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED",
        "AWS_EC2_INSTANCE_STOP_SCHEDULED",
        "AWS_EC2_INSTANCE_REBOOT_MAINTENANCE_SCHEDULED",
        "AWS_EC2_INSTANCE_REBOOT_FLEXIBLE_MAINTENANCE_SCHEDULED",
        "AWS_EC2_SYSTEM_REBOOT_MAINTENANCE_SCHEDULED",
        "AWS_EC2_SYSTEM_MAINTENANCE_EVENT",
    }
)
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(9000, 1, 1, tzinfo=UTC)


class NoticeKind(StrEnum):
    SPOT_INTERRUPTION = "spot-interruption"
    CAPACITY_RESERVATION_INTERRUPTION = "capacity-reservation-interruption"
    """An interruptible Capacity Reservation reclaims its instance (two minutes, too)."""
    REBALANCE_RECOMMENDATION = "rebalance-recommendation"
    STATE_CHANGE = "state-change"
    SCHEDULED_CHANGE = "scheduled-change"


class NoticeRejected(ValueError):
    """The event can never be handled; `str(exc)` is a one-line reason."""

    def __init__(self, reason: str, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.event_id = event_id


@dataclass(frozen=True)
class Notice:
    """One thing AWS told us about one instance."""

    event_id: str
    kind: NoticeKind
    instance_id: str
    time: datetime
    region: str
    account: str
    detail: str
    """instance-action (spot), state (state change) or event type code (health)."""
    termination_time: datetime | None = None
    """When the instance goes away, where the notice says so."""

    @property
    def key(self) -> str:
        """Same instance and same kind of notice: one response (the de-duplication key)."""
        if self.kind is NoticeKind.STATE_CHANGE:
            return f"{self.instance_id}#{self.kind}:{self.detail}"
        return f"{self.instance_id}#{self.kind}"

    def retimed(self, now: datetime) -> Notice:
        """The same notice as if it had been sent at `now` (local replay)."""
        shift = now - self.time
        moved = None if self.termination_time is None else self.termination_time + shift
        return replace(self, time=now, termination_time=moved)


InstanceId = Annotated[str, Field(pattern=INSTANCE_ID_PATTERN)]


def _http_date(value: Any) -> Any:
    """AWS Health writes times as RFC 1123 dates ("Sun, 22 Nov 2026 12:00:00 GMT")."""
    if isinstance(value, str) and not value[:4].isdigit():
        try:
            return parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return value
    return value


AwsTime = Annotated[datetime, BeforeValidator(_http_date)]


class _Detail(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class SpotWarningDetail(_Detail):
    instance_id: InstanceId = Field(alias="instance-id")
    instance_action: Literal["terminate", "stop", "hibernate"] = Field(alias="instance-action")


class CapacityReservationWarningDetail(_Detail):
    instance_id: InstanceId = Field(alias="instance-id")
    instance_action: Literal["terminate"] = Field(alias="instance-action")
    termination_time: AwsTime = Field(alias="instance-termination-time")


class RebalanceDetail(_Detail):
    instance_id: InstanceId = Field(alias="instance-id")


class StateChangeDetail(_Detail):
    instance_id: InstanceId = Field(alias="instance-id")
    state: Literal["pending", "running", "stopping", "stopped", "shutting-down", "terminated"]


class AffectedEntity(_Detail):
    entity_value: str = Field(alias="entityValue", max_length=256)


class HealthDetail(_Detail):
    service: str
    event_type_code: str = Field(alias="eventTypeCode", max_length=256)
    event_type_category: str = Field(alias="eventTypeCategory")
    start_time: AwsTime | None = Field(default=None, alias="startTime")
    affected_entities: list[AffectedEntity] = Field(
        default_factory=list, alias="affectedEntities", max_length=1000
    )


Parser = Callable[[EventBridgeModel], list[Notice]]
_REGISTRY: dict[tuple[str, str], Parser] = {}


def registers(source: str, detail_type: str) -> Callable[[Parser], Parser]:
    def add(parser: Parser) -> Parser:
        _REGISTRY[(source, detail_type)] = parser
        return parser

    return add


def _notice(event: EventBridgeModel, kind: NoticeKind, instance_id: str, detail: str) -> Notice:
    return Notice(
        event_id=event.id,
        kind=kind,
        instance_id=instance_id,
        time=_utc(event.time),
        region=event.region,
        account=event.account,
        detail=detail,
    )


@registers("aws.ec2", "EC2 Spot Instance Interruption Warning")
def parse_spot_warning(event: EventBridgeModel) -> list[Notice]:
    """The two-minute warning.

    {"detail-type": "EC2 Spot Instance Interruption Warning", "source": "aws.ec2",
     "time": "2026-11-22T10:00:00Z", "detail": {"instance-id": "i-0a1b2c3d4e5f60001",
     "instance-action": "terminate"}}
    """
    detail = SpotWarningDetail.model_validate(event.detail)
    notice = _notice(
        event, NoticeKind.SPOT_INTERRUPTION, detail.instance_id, detail.instance_action
    )
    return [replace(notice, termination_time=notice.time + SPOT_NOTICE_WINDOW)]


@registers("aws.ec2", "EC2 Capacity Reservation Instance Interruption Warning")
def parse_capacity_reservation_warning(event: EventBridgeModel) -> list[Notice]:
    """An interruptible Capacity Reservation's owner reclaims capacity: two minutes' notice,
    with the termination time in the event itself.

    {"detail-type": "EC2 Capacity Reservation Instance Interruption Warning",
     "source": "aws.ec2", "time": "2026-11-22T10:00:00Z",
     "detail": {"instance-id": "i-0a1b2c3d4e5f60001", "instance-action": "terminate",
       "instance-termination-time": "2026-11-22T10:02:00Z", "azId": "usw2-az1"}}
    """
    detail = CapacityReservationWarningDetail.model_validate(event.detail)
    notice = _notice(
        event,
        NoticeKind.CAPACITY_RESERVATION_INTERRUPTION,
        detail.instance_id,
        detail.instance_action,
    )
    return [replace(notice, termination_time=_utc(detail.termination_time))]


@registers("aws.ec2", "EC2 Instance Rebalance Recommendation")
def parse_rebalance(event: EventBridgeModel) -> list[Notice]:
    """An elevated risk of interruption, often well before any warning.

    {"detail-type": "EC2 Instance Rebalance Recommendation", "source": "aws.ec2",
     "detail": {"instance-id": "i-0a1b2c3d4e5f60002"}}
    """
    detail = RebalanceDetail.model_validate(event.detail)
    return [_notice(event, NoticeKind.REBALANCE_RECOMMENDATION, detail.instance_id, "rebalance")]


@registers("aws.ec2", "EC2 Instance State-change Notification")
def parse_state_change(event: EventBridgeModel) -> list[Notice]:
    """The instance really changes state (closes the loop; catches missed warnings).

    {"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
     "detail": {"instance-id": "i-0a1b2c3d4e5f60001", "state": "shutting-down"}}
    """
    detail = StateChangeDetail.model_validate(event.detail)
    return [_notice(event, NoticeKind.STATE_CHANGE, detail.instance_id, detail.state)]


@registers("aws.health", "AWS Health Event")
def parse_health_event(event: EventBridgeModel) -> list[Notice]:
    """A scheduled change for EC2 (retirement, stop, reboot maintenance).

    {"detail-type": "AWS Health Event", "source": "aws.health",
     "detail": {"service": "EC2", "eventTypeCategory": "scheduledChange",
       "eventTypeCode": "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED",
       "startTime": "Sun, 22 Nov 2026 12:00:00 GMT",
       "affectedEntities": [{"entityValue": "i-0a1b2c3d4e5f60001"}]}}
    """
    detail = HealthDetail.model_validate(event.detail)
    if detail.service != "EC2" or detail.event_type_category != "scheduledChange":
        return []
    if detail.event_type_code not in INSTANCE_DOWN_CODES:
        return []
    start = None if detail.start_time is None else _utc(detail.start_time)
    instance_ids = [e.entity_value for e in detail.affected_entities] or list(event.resources)
    notices = []
    for instance_id in instance_ids:
        if not _is_instance_id(instance_id):
            raise NoticeRejected(f"affected entity {instance_id[:64]!r} is not an EC2 instance id")
        notice = _notice(event, NoticeKind.SCHEDULED_CHANGE, instance_id, detail.event_type_code)
        notices.append(replace(notice, termination_time=start))
    return notices


def parse_event(body: str | bytes | dict[str, Any]) -> list[Notice]:
    """Parse one EventBridge event. Unknown kinds give []; broken ones raise NoticeRejected."""
    event = _envelope(body)
    parser = _REGISTRY.get((event.source, event.detail_type))
    if parser is None:
        return []
    try:
        notices = parser(event)
    except ValidationError as exc:
        raise NoticeRejected(_one_line(exc, prefix="detail"), event.id) from None
    except NoticeRejected as exc:
        raise NoticeRejected(str(exc), event.id) from None
    except OverflowError:  # a time so near the calendar's edge that UTC falls off it
        raise NoticeRejected("a time in the event is out of range", event.id) from None
    for notice in notices:
        for moment in (notice.time, notice.termination_time):
            if moment is not None and not EARLIEST_TIME <= moment <= LATEST_TIME:
                raise NoticeRejected(
                    f"time {moment.isoformat()} lies outside {EARLIEST_TIME.year} to "
                    f"{LATEST_TIME.year}",
                    event.id,
                )
    return notices


def _envelope(body: str | bytes | dict[str, Any]) -> EventBridgeModel:
    if isinstance(body, str | bytes):
        if len(body) > MAX_EVENT_BYTES:
            raise NoticeRejected(f"event is {len(body)} bytes, more than {MAX_EVENT_BYTES}")
        try:
            body = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise NoticeRejected(f"event is not JSON: {exc}"[:200]) from None
        except RecursionError:
            raise NoticeRejected("event is nested too deeply") from None
    if not isinstance(body, dict):
        raise NoticeRejected(f"event is a JSON {type(body).__name__}, not an object")
    _require_storable_text(body)
    raw_id = body.get("id")
    event_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= MAX_EVENT_ID_CHARS else None
    try:
        event: EventBridgeModel = parse(event=body, model=EventBridgeModel)
    except ValidationError as exc:
        raise NoticeRejected(_one_line(exc), event_id) from None
    if event_id is None:
        raise NoticeRejected(f"field 'id' is longer than {MAX_EVENT_ID_CHARS} characters")
    if not isinstance(event.detail, dict):
        raise NoticeRejected("field 'detail' must be an object", event.id)
    return event


def _require_storable_text(body: dict[str, Any]) -> None:
    """JSON may escape lone surrogates ("\\ud800"); no ledger, log or UTF-8 can hold them."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise NoticeRejected("event holds text that is not Unicode (a lone surrogate)") from None
    except RecursionError:
        raise NoticeRejected("event is nested too deeply") from None


def _one_line(exc: ValidationError, prefix: str = "") -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in (prefix, *first["loc"]) if part != "")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"field '{where[:120]}': {first['msg'][:160]}{more}"


def _is_instance_id(value: str) -> bool:
    return re.fullmatch(INSTANCE_ID_PATTERN, value) is not None


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
