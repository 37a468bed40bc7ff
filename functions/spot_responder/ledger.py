"""The ledger: what happened to every notice, and which Ray jobs each one hit.

One entry per notice key (same instance + same kind of notice). The entry is claimed
with a conditional write before anything is done, which is what makes a notice
delivered five times yield one response: the later deliveries only add their event
ids to the entry. An entry whose handling failed, or that has been in progress for
longer than a Lambda can run, can be claimed again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

NOTICE_SK = "notice"
JOB_SK_PREFIX = "job#"


class LedgerUnavailable(RuntimeError):
    """The ledger store could not be read or written."""


class Status(StrEnum):
    IN_PROGRESS = "in-progress"
    DRAINED = "drained"
    ALREADY_DRAINING = "already-draining"
    ANALYSED = "analysed"
    NODE_NOT_FOUND = "node-not-found"
    ALERTED = "alerted"
    RECORDED = "recorded"
    IGNORED = "ignored"
    REJECTED = "rejected"
    FAILED = "failed"
    """Failed for a passing reason; the queue delivers it again."""
    DEAD_LETTERED = "dead-lettered"
    """Failed on its last delivery; the message went to the dead-letter queue."""
    AGENT_TOO_OLD = "agent-too-old"
    """The head's SSM Agent cannot run the document; not retried, alarmed."""
    SCHEDULED = "scheduled"
    """A change far ahead: recorded, and its delivery armed for shortly before the start
    (that delivery claims the entry again and drains)."""

    @property
    def reclaimable(self) -> bool:
        return self in {Status.FAILED, Status.DEAD_LETTERED, Status.SCHEDULED}


@dataclass(frozen=True)
class LedgerEntry:
    key: str
    instance_id: str | None
    kind: str
    status: Status
    recorded_at: str
    """ISO-8601 UTC of the first delivery (the entry's age)."""
    updated_at: str
    claimed_at: str = ""
    """When the current attempt claimed it (staleness counts from here)."""
    claimed_by: str = ""
    """The queue delivery that made the current claim: `message-id#receive-count`."""
    detail: str = ""
    cluster: str | None = None
    node_type: str | None = None
    lifecycle: str | None = None
    availability_zone: str | None = None
    action: str | None = None
    reason: str = ""
    ray_node_id: str | None = None
    notice_time: str | None = None
    drain_deadline: str | None = None
    drain_issued_at: str | None = None
    attempts: int = 1
    deliveries: int = 1
    event_ids: tuple[str, ...] = ()
    impacted_jobs: tuple[dict[str, Any], ...] = ()
    replacement: dict[str, Any] | None = None
    """The capacity request the head node made for this notice, if any."""
    expires_at: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["event_ids"] = list(self.event_ids)
        data["impacted_jobs"] = list(self.impacted_jobs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LedgerEntry:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = Status(values["status"])
        values["event_ids"] = tuple(values.get("event_ids") or ())
        values["impacted_jobs"] = tuple(values.get("impacted_jobs") or ())
        for name in ("attempts", "deliveries", "expires_at"):
            if name in values:
                values[name] = int(values[name])
        return cls(**values)

    def with_outcome(self, status: Status, now: datetime, **changes: Any) -> LedgerEntry:
        return replace(self, status=status, updated_at=iso(now), **changes)

    def is_stale(self, now: datetime, after: timedelta) -> bool:
        claimed = parse_iso(self.claimed_at or self.updated_at)
        return self.status is Status.IN_PROGRESS and claimed < now - after

    def is_left_by_earlier_receive(self, claimant: str) -> bool:
        """In progress for an earlier receive of the very message `claimant` delivers again.

        The queue hands a message out again only once the invocation that had it gave it
        back or timed out, so nobody is working on that claim any more (an outcome write
        that failed, or an invocation that died).
        """
        held, again = _delivery(self.claimed_by), _delivery(claimant)
        return (
            self.status is Status.IN_PROGRESS
            and held is not None
            and again is not None
            and held[0] == again[0]
            and held[1] < again[1]
        )


@dataclass(frozen=True)
class JobHit:
    """One Ray job hit by one notice (the job-centric view)."""

    cluster: str
    job_id: str
    notice_key: str
    instance_id: str | None
    kind: str
    status: str
    recorded_at: str
    impact: dict[str, Any] = field(default_factory=dict)

    @property
    def job_key(self) -> str:
        return job_key(self.cluster, self.job_id)


@dataclass(frozen=True)
class Claim:
    """The result of claiming a notice key: ours to handle, or a duplicate of `existing`."""

    entry: LedgerEntry
    duplicate_of: LedgerEntry | None = None

    @property
    def is_duplicate(self) -> bool:
        return self.duplicate_of is not None


class Ledger(Protocol):
    def claim(self, entry: LedgerEntry, *, now: datetime, stale_after: timedelta) -> Claim: ...

    def save(self, entry: LedgerEntry) -> None:
        """Write the entry and its job hits, replacing what the key held."""
        ...

    def get(self, key: str) -> LedgerEntry | None: ...

    def entries(self, limit: int = 1000) -> list[LedgerEntry]:
        """Newest first."""
        ...

    def job_hits(self, cluster_job_key: str | None = None) -> list[JobHit]:
        """Every interruption that hit a job (`cluster#job_id`), or all of them."""
        ...


def job_key(cluster: str, job_id: str) -> str:
    return f"{cluster}#{job_id}"


def job_hits_of(entry: LedgerEntry) -> list[JobHit]:
    return [
        JobHit(
            cluster=entry.cluster or "-",
            job_id=str(job["job_id"]),
            notice_key=entry.key,
            instance_id=entry.instance_id,
            kind=entry.kind,
            status=entry.status.value,
            recorded_at=entry.recorded_at,
            impact=job,
        )
        for job in entry.impacted_jobs
        if job.get("job_id")
    ]


#: Event ids one entry keeps (an entry must stay far below DynamoDB's 400 KB per item).
MAX_EVENT_IDS = 50


def union(first: Iterable[str], then: Iterable[str]) -> tuple[str, ...]:
    """Event ids of both, each once, in the order they were first seen; past MAX_EVENT_IDS,
    the first and the latest ones (`deliveries` still counts every delivery)."""
    ids = tuple(dict.fromkeys([*first, *then]))
    return ids if len(ids) <= MAX_EVENT_IDS else (ids[0], *ids[1 - MAX_EVENT_IDS :])


def merge_delivery(existing: LedgerEntry, event_ids: Iterable[str], now: datetime) -> LedgerEntry:
    return replace(
        existing,
        deliveries=existing.deliveries + 1,
        event_ids=union(existing.event_ids, event_ids),
        updated_at=iso(now),
    )


def delivery_of(message_id: str, receive_count: int) -> str:
    """What `claimed_by` holds: one receive of one queue message."""
    return f"{message_id}#{receive_count}"


def _delivery(text: str) -> tuple[str, int] | None:
    message_id, _, count = text.rpartition("#")
    return (message_id, int(count)) if message_id and count.isdigit() else None


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class ConditionalLedger:
    """The claim algorithm over any store that can do a compare-and-set on one entry.

    Subclasses supply `_read` and `_write_if` (write only when the stored entry still
    has the `updated_at` we read, or does not exist when we read none).
    """

    max_conflicts = 8

    def _read(self, key: str) -> LedgerEntry | None:
        raise NotImplementedError

    def _write_if(self, entry: LedgerEntry, expected_updated_at: str | None) -> bool:
        raise NotImplementedError

    def _write_jobs(self, entry: LedgerEntry) -> None:
        raise NotImplementedError

    def get(self, key: str) -> LedgerEntry | None:
        return self._read(key)

    def save(self, entry: LedgerEntry) -> None:
        """Write an outcome, keeping the deliveries that arrived while it was being handled."""
        for _ in range(self.max_conflicts):
            current = self._read(entry.key)
            merged = entry
            if current is not None:
                merged = replace(
                    entry,
                    deliveries=max(current.deliveries, entry.deliveries),
                    event_ids=union(entry.event_ids, current.event_ids),
                )
            if self._write_if(merged, None if current is None else current.updated_at):
                self._write_jobs(merged)
                return
        raise LedgerUnavailable(f"ledger entry {entry.key} kept changing under us")

    def claim(self, entry: LedgerEntry, *, now: datetime, stale_after: timedelta) -> Claim:
        for _ in range(self.max_conflicts):
            existing = self._read(entry.key)
            if existing is None:
                if self._write_if(entry, None):
                    return Claim(entry)
                continue
            if (
                existing.status.reclaimable
                or existing.is_stale(now, stale_after)
                or existing.is_left_by_earlier_receive(entry.claimed_by)
            ):
                again = replace(
                    merge_delivery(existing, entry.event_ids, now),
                    status=Status.IN_PROGRESS,
                    claimed_at=iso(now),
                    claimed_by=entry.claimed_by,
                    attempts=existing.attempts + 1,
                    reason="",
                )
                if self._write_if(again, existing.updated_at):
                    return Claim(again)
                continue
            merged = merge_delivery(existing, entry.event_ids, now)
            if self._write_if(merged, existing.updated_at):
                return Claim(merged, duplicate_of=existing)
        raise LedgerUnavailable(f"ledger entry {entry.key} kept changing under us")
