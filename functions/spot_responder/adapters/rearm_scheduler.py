"""NoticeRearm on EventBridge Scheduler: a one-time schedule that sends the event to the
notice queue (through a role only that schedule group may use) and then deletes itself."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from spot_responder.rearm import RearmUnavailable


class SchedulerRearm:
    def __init__(self, scheduler: Any, group: str, role_arn: str, queue_arn: str) -> None:
        """`scheduler`: a boto3 EventBridge Scheduler client."""
        self._scheduler = scheduler
        self.group = group
        self.role_arn = role_arn
        self.queue_arn = queue_arn

    def arm(self, name: str, at: datetime, body: str) -> None:
        moment = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        try:
            self._scheduler.create_schedule(
                Name=name,
                GroupName=self.group,
                ScheduleExpression=f"at({moment})",
                ScheduleExpressionTimezone="UTC",
                FlexibleTimeWindow={"Mode": "OFF"},
                ActionAfterCompletion="DELETE",
                Target={"Arn": self.queue_arn, "RoleArn": self.role_arn, "Input": body},
                Description="spot-responder: drain a scheduled change near its start",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConflictException":
                return  # armed by an earlier delivery of the same notice
            raise RearmUnavailable(f"could not arm the drain near the start: {exc}") from exc
        except BotoCoreError as exc:
            raise RearmUnavailable(f"could not arm the drain near the start: {exc}") from exc
