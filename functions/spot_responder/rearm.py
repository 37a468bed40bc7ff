"""The port that brings a notice back later: a scheduled change drained near its start.

An AWS Health scheduled change (a retirement, a maintenance stop) is announced days ahead.
Draining at once would take the node out of service for the whole wait, and Health sends
the event once. So the responder records it and arms a one-time delivery of the same event
to its own queue shortly before the start; delivered then, the event drains like any other.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Protocol


class RearmUnavailable(RuntimeError):
    """The delivery could not be armed (a passing failure: the notice is retried)."""


class NoticeRearm(Protocol):
    def arm(self, name: str, at: datetime, body: str) -> None:
        """Deliver `body` to the notice queue at `at`; arming the same `name` twice is a
        no-op. Raises RearmUnavailable."""
        ...


def rearm_name(notice_key: str, at: datetime) -> str:
    """One name per notice and time (EventBridge Scheduler: at most 64 of [0-9A-Za-z_.-])."""
    digest = hashlib.sha256(f"{notice_key}@{at.isoformat()}".encode()).hexdigest()
    return f"drain-near-start-{digest[:40]}"
