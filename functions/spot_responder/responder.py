"""A batch of queue records in, one request per Ray cluster out, every notice recorded.

parse → claim in the ledger (de-duplication) → resolve the instances → decide →
one request per cluster (in parallel) → write each outcome. A record whose handling
failed for a passing reason is reported for retry; after the last delivery the queue
dead-letters it and its ledger entry says so. No AWS here: the ports are injected.
"""

from __future__ import annotations

import contextvars
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any

from spot_responder.budget import Budget, applied
from spot_responder.channel import AgentTooOld, ChannelUnavailable, ClusterChannel, ClusterRefused
from spot_responder.contract import (
    MAX_NOTICES_PER_REQUEST,
    ClusterResponse,
    NoticeRequest,
    build_request,
)
from spot_responder.instances import DirectoryUnavailable, Instance, InstanceDirectory
from spot_responder.ledger import (
    Ledger,
    LedgerEntry,
    LedgerUnavailable,
    Status,
    delivery_of,
    iso,
)
from spot_responder.notices import Notice, NoticeKind, NoticeRejected, parse_event
from spot_responder.policy import Action, Decision, decide
from spot_responder.rearm import NoticeRearm, RearmUnavailable, rearm_name
from spot_responder.reconcile import reconcile_request, record_verdict_outcomes
from spot_responder.settings import Settings

# A claim older than this cannot belong to a running invocation (the responder function
# times out after 40 s): its notice is handled again.
STALE_CLAIM = timedelta(seconds=45)
RECONCILE_ON_STATES = frozenset({"running", "terminated"})
# Every cluster call of a batch runs at once (a batch of 50 records names at most 50
# clusters, plus their reconciles); the cap only guards against a runaway batch.
MAX_PARALLEL_CALLS = 100
# A call that honours the budget returns right at its end; this much later it is late.
BUDGET_GRACE_S = 0.5

OUTCOME_STATUS = {
    "drained": Status.DRAINED,
    "already-draining": Status.ALREADY_DRAINING,
    "analysed": Status.ANALYSED,
    "node-not-found": Status.NODE_NOT_FOUND,
    "head-node": Status.ALERTED,
}
WARNED_STATUSES = {Status.IN_PROGRESS, Status.DRAINED, Status.ALREADY_DRAINING}
ACTION_STATUS = {
    Action.ALERT: Status.ALERTED,
    Action.RECORD: Status.RECORDED,
    Action.IGNORE: Status.IGNORED,
}


class RecordStatus(StrEnum):
    HANDLED = "handled"
    REJECTED = "rejected"
    """It can never succeed; recorded and not retried."""
    RETRY = "retry"
    DEAD_LETTER = "dead-letter"
    """Failed, and no retry can land before its drain deadline: to the dead-letter queue."""


@dataclass(frozen=True)
class InboundRecord:
    message_id: str
    body: str
    receive_count: int = 1


@dataclass(frozen=True)
class NoticeReport:
    message_id: str
    entry: LedgerEntry
    duplicate: bool = False
    stored: bool = True
    """False for a notice about an instance that is not a served Ray node (no ledger write)."""


@dataclass
class BatchReport:
    statuses: dict[str, RecordStatus] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    notices: list[NoticeReport] = field(default_factory=list)
    requests_sent: int = 0
    cluster_failures: int = 0
    reconciled: dict[str, str] = field(default_factory=dict)
    """Clusters reconciled because a worker started or ended: cluster → outcome."""

    def to_retry(self) -> list[str]:
        return [m for m, s in self.statuses.items() if s is RecordStatus.RETRY]

    def to_dead_letter(self) -> list[str]:
        return [m for m, s in self.statuses.items() if s is RecordStatus.DEAD_LETTER]


@dataclass
class _Work:
    """One claimed notice on its way through the batch."""

    record: InboundRecord
    notice: Notice
    entry: LedgerEntry
    instance: Instance | None = None
    decision: Decision | None = None
    avoid_pools: tuple[str, ...] = ()


class Responder:
    def __init__(
        self,
        *,
        directory: InstanceDirectory,
        channel: ClusterChannel,
        ledger: Ledger,
        settings: Settings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rearm: NoticeRearm | None = None,
    ) -> None:
        """`rearm`: brings a scheduled change back near its start (None: nothing can, so
        such a change is only recorded, and EC2's stop at the start is what drains)."""
        self.directory = directory
        self.channel = channel
        self.ledger = ledger
        self.settings = settings
        self.clock = clock
        self.rearm = rearm

    def handle(
        self,
        records: Sequence[InboundRecord],
        *,
        retime: bool = False,
        budget: Budget | None = None,
    ) -> BatchReport:
        """Handle a batch. `retime`: move each notice to now (local replay of old events).
        `budget`: how long the cluster calls may take (the Lambda's remaining time)."""
        budget = budget or Budget.unlimited()
        report = BatchReport()
        parsed: list[tuple[InboundRecord, list[Notice]]] = []
        for record in records:
            report.statuses[record.message_id] = RecordStatus.HANDLED
            try:
                notices = self._parse_record(record, report, retime=retime)
            except LedgerUnavailable as exc:
                self._retry(record, report, str(exc))
                continue
            if notices:
                parsed.append((record, notices))
        if not parsed:
            return report
        instances = self._look_up({n.instance_id for _, notices in parsed for n in notices})
        work: list[_Work] = []
        in_flight: set[str] = set()  # keys this batch claimed
        for record, notices in parsed:
            try:
                claimed = self._claim_notices(record, notices, instances, report, in_flight)
                in_flight.update(w.entry.key for w in claimed)
                work.extend(claimed)
            except LedgerUnavailable as exc:
                self._retry(record, report, str(exc))
        if work:
            self._resolve_and_decide(work, report, instances)
            self._dispatch(work, report, budget)
        return report

    def _look_up(self, instance_ids: set[str]) -> dict[str, Instance] | DirectoryUnavailable:
        try:
            return self.directory.describe(instance_ids)
        except DirectoryUnavailable as exc:
            return exc

    def _reconciles(self, work: list[_Work]) -> list[str]:
        """A worker that started may be a replacement, one that ended frees its request:
        let the head node settle its capacity requests now rather than at the next
        scheduled reconcile. Best effort: the notices are recorded whatever happens there.
        """
        clusters = {
            item.instance.cluster
            for item in work
            if item.notice.kind is NoticeKind.STATE_CHANGE
            and item.notice.detail in RECONCILE_ON_STATES
            and item.instance is not None
            and item.instance.is_ray_node
            and not item.instance.is_head
            and item.instance.cluster
            and self.settings.allows_cluster(item.instance.cluster)
        }
        return sorted(c for c in clusters if c)

    def _reconcile(self, cluster: str) -> dict[str, Any] | str:
        """The head's reconcile answer, or why there is none (run in a worker thread)."""
        try:
            return dict(self.channel.call(cluster, reconcile_request(cluster)))
        except (ChannelUnavailable, ClusterRefused) as exc:
            return f"reconcile failed: {exc}"

    def _record_reconcile(self, outcome: object) -> str:
        """What a reconcile did, its verdict outcomes written to the ledger (in this thread:
        the ledger is used by one thread only)."""
        if isinstance(outcome, Exception):
            return f"reconcile failed: {outcome}"
        if not isinstance(outcome, dict):
            return str(outcome)
        released = len(outcome.get("released") or ())
        checked = record_verdict_outcomes(outcome, self.ledger)
        return f"{released} capacity request(s) released, {checked} verdict(s) checked"

    # -- parse and claim -------------------------------------------------------------

    def _parse_record(
        self, record: InboundRecord, report: BatchReport, *, retime: bool
    ) -> list[Notice]:
        """The record's notices; an event that can never be handled is recorded as such."""
        now = self.clock()
        try:
            notices = parse_event(record.body)
        except NoticeRejected as exc:
            self._reject(record, report, f"rejected#{exc.event_id or record.message_id}", str(exc))
            return []
        if not notices:
            reason = "no parser for this event's source and detail-type"
            key = f"unhandled#{record.message_id}"
            self._record_unactionable(record, report, key, Status.IGNORED, reason, now)
            return []
        account = self.settings.account_id
        foreign = sorted({n.account for n in notices if account and n.account != account})
        if foreign:
            # The rules match the stack's own account; anything else was put on the queue
            # by hand or forged.
            reason = f"event from account {foreign[0]}, not this stack's account {account}"
            self._reject(record, report, f"rejected#{notices[0].event_id}", reason)
            return []
        return [n.retimed(now) if retime else n for n in notices]

    def _reject(self, record: InboundRecord, report: BatchReport, key: str, reason: str) -> None:
        self._record_unactionable(record, report, key, Status.REJECTED, reason, self.clock())
        report.statuses[record.message_id] = RecordStatus.REJECTED
        report.reasons[record.message_id] = reason

    def _claim_notices(
        self,
        record: InboundRecord,
        notices: list[Notice],
        instances: dict[str, Instance] | DirectoryUnavailable,
        report: BatchReport,
        in_flight: set[str],
    ) -> list[_Work]:
        """Claim the notices that concern a served Ray node; `in_flight`: keys this batch
        already claimed. A notice for any other instance (every state change in the region
        comes here) is reported but costs no ledger write. When EC2 could not be asked,
        every notice is claimed, so that the ledger can say why it failed."""
        now = self.clock()
        claimed = []
        for notice in notices:
            if not isinstance(instances, DirectoryUnavailable):
                instance = instances.get(notice.instance_id)
                first_look = decide(notice, instance, self.settings, warned=False, now=now)
                if first_look.action is Action.IGNORE:
                    entry = _describe(self._new_entry(notice, now, record), instance, first_look)
                    ignored = entry.with_outcome(Status.IGNORED, now)
                    report.notices.append(NoticeReport(record.message_id, ignored, stored=False))
                    continue
            claim = self.ledger.claim(
                self._new_entry(notice, now, record), now=now, stale_after=STALE_CLAIM
            )
            if not claim.is_duplicate:
                claimed.append(_Work(record, notice, claim.entry))
                continue
            report.notices.append(NoticeReport(record.message_id, claim.entry, True))
            held = claim.duplicate_of
            if held and held.status is Status.IN_PROGRESS and held.key not in in_flight:
                # Another invocation holds it, or held it and died: come back later, when
                # it is finished (then a duplicate) or stale (then ours).
                self._retry(record, report, f"{held.key} is being handled elsewhere")
        return claimed

    def _new_entry(self, notice: Notice, now: datetime, record: InboundRecord) -> LedgerEntry:
        return LedgerEntry(
            key=notice.key,
            instance_id=notice.instance_id,
            kind=notice.kind.value,
            detail=notice.detail,
            status=Status.IN_PROGRESS,
            recorded_at=iso(now),
            updated_at=iso(now),
            claimed_at=iso(now),
            claimed_by=delivery_of(record.message_id, record.receive_count),
            notice_time=iso(notice.time),
            event_ids=(notice.event_id,),
            expires_at=self._expiry(now),
        )

    def _record_unactionable(
        self,
        record: InboundRecord,
        report: BatchReport,
        key: str,
        status: Status,
        reason: str,
        now: datetime,
    ) -> None:
        entry = LedgerEntry(
            key=key,
            instance_id=None,
            kind=status.value if status is Status.REJECTED else "unhandled",
            status=status,
            recorded_at=iso(now),
            updated_at=iso(now),
            reason=reason,
            event_ids=(record.message_id,),
            expires_at=self._expiry(now),
        )
        self.ledger.save(entry)
        report.notices.append(NoticeReport(record.message_id, entry))

    # -- resolve and decide ----------------------------------------------------------

    def _resolve_and_decide(
        self,
        work: list[_Work],
        report: BatchReport,
        instances: dict[str, Instance] | DirectoryUnavailable,
    ) -> None:
        if isinstance(instances, DirectoryUnavailable):
            for item in work:
                self._fail(item, report, str(instances))
            work.clear()
            return
        now = self.clock()
        decided = []
        for item in work:
            item.instance = instances.get(item.notice.instance_id)
            try:
                warned = self._was_warned(item.notice)
            except LedgerUnavailable as exc:
                self._fail(item, report, str(exc))
                continue
            item.decision = decide(
                item.notice, item.instance, self.settings, warned=warned, now=now
            )
            decided.append(item)
        _cap_per_event(decided, self.settings.max_nodes_per_event)
        for item in decided:
            assert item.decision is not None
            item.entry = _describe(item.entry, item.instance, item.decision)
        work[:] = decided

    def _was_warned(self, notice: Notice) -> bool:
        if notice.kind not in {NoticeKind.STATE_CHANGE, NoticeKind.REBALANCE_RECOMMENDATION}:
            return False
        for kind in (NoticeKind.SPOT_INTERRUPTION, NoticeKind.CAPACITY_RESERVATION_INTERRUPTION):
            warning = self.ledger.get(f"{notice.instance_id}#{kind}")
            if warning is not None and warning.status in WARNED_STATUSES:
                return True
        return False

    # -- act -------------------------------------------------------------------------

    def _dispatch(self, work: list[_Work], report: BatchReport, budget: Budget) -> None:
        by_cluster: dict[str, list[_Work]] = defaultdict(list)
        for item in work:
            if item.decision is not None and item.decision.needs_cluster and item.instance:
                by_cluster[item.instance.cluster or ""].append(item)
            elif item.decision is not None and item.decision.action is Action.SCHEDULE:
                self._arm(item, report)
            elif item.decision is not None:
                self._finish(item, report, ACTION_STATUS[item.decision.action])
        for items in by_cluster.values():
            _avoid_pools_hit_in_this_batch(items)
        batches = [
            (cluster, items[start : start + MAX_NOTICES_PER_REQUEST])
            for cluster, items in by_cluster.items()
            for start in range(0, len(items), MAX_NOTICES_PER_REQUEST)
        ]
        reconciles = self._reconciles(work)
        # Every cluster call of the batch at once, drains and reconciles alike: one slow
        # head costs the others nothing, and none outlives the budget.
        calls: list[Callable[[], object]] = [partial(self._ask, *b) for b in batches]
        calls += [partial(self._reconcile, cluster) for cluster in reconciles]
        answers = _in_parallel(calls, budget)
        for (_, items), answer in zip(batches, answers[: len(batches)], strict=True):
            report.requests_sent += 1
            assert isinstance(answer, ClusterResponse | Exception)
            self._apply(items, answer, report)
        for cluster, outcome in zip(reconciles, answers[len(batches) :], strict=True):
            report.reconciled[cluster] = self._record_reconcile(outcome)

    def _arm(self, item: _Work, report: BatchReport) -> None:
        """Bring a change far ahead back shortly before its start, where it drains."""
        assert item.decision is not None
        assert item.decision.rearm_at is not None
        at = item.decision.rearm_at
        if self.rearm is None:
            reason = (
                f"{item.entry.reason}; nothing here brings it back, so EC2's stop at the "
                "start is drained"
            )
            self._finish(item, report, Status.RECORDED, reason=reason)
            return
        try:
            self.rearm.arm(rearm_name(item.entry.key, at), at, item.record.body)
        except RearmUnavailable as exc:
            self._fail(item, report, str(exc))
            return
        reason = f"{item.entry.reason}; comes back to be drained at {iso(at)}"
        self._finish(item, report, Status.SCHEDULED, reason=reason)

    def _ask(self, cluster: str, items: list[_Work]) -> ClusterResponse | Exception:
        mode = self.settings.replacement_mode.value
        request = build_request(cluster, [_notice_request(i, mode) for i in items])
        try:
            return self.channel.send(cluster, request)
        except (ChannelUnavailable, ClusterRefused) as exc:
            return exc

    def _apply(
        self, items: Iterable[_Work], answer: ClusterResponse | Exception, report: BatchReport
    ) -> None:
        if isinstance(answer, Exception):
            report.cluster_failures += 1
        for item in items:
            if isinstance(answer, AgentTooOld):
                self._finish(item, report, Status.AGENT_TOO_OLD, reason=str(answer))
                continue
            if isinstance(answer, ClusterRefused):
                self._finish(item, report, Status.REJECTED, reason=str(answer))
                continue
            if isinstance(answer, Exception):
                self._fail(item, report, str(answer))
                continue
            result = answer.results.get(item.entry.key)
            replacement = next(
                (c for c in answer.capacity_requests if c.get("notice_id") == item.entry.key),
                None,
            )
            status = None if result is None else OUTCOME_STATUS.get(result.outcome)
            if result is None or status is None:
                outcome = "no result" if result is None else f"{result.outcome}: {result.message}"
                self._fail(item, report, f"cluster could not act on the notice ({outcome})")
                continue
            self._finish(
                item,
                report,
                status,
                reason=result.message or item.entry.reason,
                ray_node_id=result.ray_node_id,
                drain_deadline=result.drain_deadline,
                drain_issued_at=result.drain_issued_at,
                impacted_jobs=result.impacted_jobs,
                replacement=replacement,
            )

    def _finish(self, item: _Work, report: BatchReport, status: Status, **changes: object) -> None:
        entry = item.entry.with_outcome(status, self.clock(), **changes)
        self._save(item, entry, report)
        if status is Status.REJECTED and report.statuses[item.record.message_id] not in (
            RecordStatus.RETRY,
            RecordStatus.DEAD_LETTER,
        ):
            report.statuses[item.record.message_id] = RecordStatus.REJECTED

    def _fail(self, item: _Work, report: BatchReport, reason: str) -> None:
        """A passing failure: retried while a retry can still land before the notice's
        deadline; after that the record goes to the dead-letter queue, the ledger saying
        so. The queue's own maxReceiveCount is only the backstop (invocations that died)."""
        now = self.clock()
        retry_at = now + timedelta(seconds=self.settings.retry_delay_s)
        out_of_time = retry_at >= self._retry_until(item)
        backstop = item.record.receive_count >= self.settings.max_receive_count
        if out_of_time or backstop:
            why = "no retry can land before its deadline" if out_of_time else "last delivery"
            reason = f"{reason} (dead-lettered: {why})"
        status = Status.DEAD_LETTERED if out_of_time or backstop else Status.FAILED
        entry = item.entry.with_outcome(status, now, reason=reason)
        self._save(item, entry, report)
        if out_of_time and not backstop:
            self._dead_letter(item.record, report, reason)
        else:
            self._retry(item.record, report, reason)

    def _retry_until(self, item: _Work) -> datetime:
        """The latest a retry is worth anything: the drain deadline, and never less than the
        notice window after the notice (a drain "at once" still has the window)."""
        window_end = item.notice.time + timedelta(seconds=self.settings.notice_window_s)
        deadline = item.decision.drain_deadline if item.decision is not None else None
        if deadline is None:
            deadline = item.notice.termination_time
        return window_end if deadline is None else max(deadline, window_end)

    def _save(self, item: _Work, entry: LedgerEntry, report: BatchReport) -> None:
        item.entry = entry
        try:
            self.ledger.save(entry)
        except LedgerUnavailable as exc:
            self._retry(item.record, report, str(exc))
        report.notices.append(NoticeReport(item.record.message_id, entry))

    @staticmethod
    def _retry(record: InboundRecord, report: BatchReport, reason: str) -> None:
        report.statuses[record.message_id] = RecordStatus.RETRY
        report.reasons[record.message_id] = reason

    @staticmethod
    def _dead_letter(record: InboundRecord, report: BatchReport, reason: str) -> None:
        """Unless another notice of the record is still worth a retry."""
        if report.statuses[record.message_id] is not RecordStatus.RETRY:
            report.statuses[record.message_id] = RecordStatus.DEAD_LETTER
            report.reasons[record.message_id] = reason

    def _expiry(self, now: datetime) -> int:
        return int((now + timedelta(days=self.settings.ledger_ttl_days)).timestamp())


def _in_parallel(calls: list[Callable[[], object]], budget: Budget) -> list[object]:
    """Run every call in its own thread under `budget`; a call still running when the
    budget is spent is answered with ChannelUnavailable (its records are retried) and left
    to stop on its own (the channel reads the same budget)."""
    if not calls:
        return []
    pool = ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_CALLS, len(calls)))
    try:
        futures = [
            pool.submit(contextvars.copy_context().run, _within, budget, call) for call in calls
        ]
        remaining = budget.remaining_s()
        wait(futures, timeout=None if remaining == float("inf") else remaining + BUDGET_GRACE_S)
        late = ChannelUnavailable(
            "no answer from the head node within the invocation's time budget"
        )
        return [_outcome(f) if f.done() else late for f in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _outcome(future: Future[object]) -> object:
    """What a call returned, or the exception it raised: one call's bug fails its own records."""
    error = future.exception()
    if error is None:
        return future.result()
    if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: the invocation's end
        raise error
    return error


def _within(budget: Budget, call: Callable[[], object]) -> object:
    with applied(budget):
        return call()


def _describe(entry: LedgerEntry, instance: Instance | None, decision: Decision) -> LedgerEntry:
    if instance is None:
        return replace(entry, action=decision.action.value, reason=decision.reason)
    return replace(
        entry,
        cluster=instance.cluster,
        node_type=instance.node_type,
        lifecycle=instance.lifecycle,
        availability_zone=instance.availability_zone,
        action=decision.action.value,
        reason=decision.reason,
        drain_deadline=None if decision.drain_deadline is None else iso(decision.drain_deadline),
    )


def _cap_per_event(items: list[_Work], cap: int) -> None:
    """At most `cap` nodes are drained or analysed for one event; the others are recorded.

    One AWS Health event may name up to 1,000 instances: a forged or runaway one must not
    drain a fleet. Which ones act is stable (instance id order).
    """
    by_event: dict[str, list[_Work]] = defaultdict(list)
    for item in items:
        if item.decision is not None and item.decision.needs_cluster:
            by_event[item.notice.event_id].append(item)
    for acting in by_event.values():
        if len(acting) <= cap:
            continue
        for item in sorted(acting, key=lambda i: i.notice.instance_id)[cap:]:
            assert item.decision is not None
            item.decision = Decision(
                Action.RECORD,
                f"{item.decision.reason}; not acted on: the event names {len(acting)} Ray "
                f"nodes, more than the {cap} one event may drain (MaxNodesPerEvent)",
            )


def _avoid_pools_hit_in_this_batch(items: list[_Work]) -> None:
    """A replacement should not come from a pool that is being interrupted right now.

    The head node remembers the pools interrupted on its cluster; the notices of this very
    batch reach it together, so they are named here.
    """
    hit = sorted({i.instance.pool for i in items if i.instance and i.instance.pool})
    for item in items:
        item.avoid_pools = tuple(hit)


# Contract v1 names four kinds; the head handles a Capacity Reservation warning exactly
# like a spot warning (drain by the deadline, replace), so that is how it is sent.
_WIRE_KIND = {NoticeKind.CAPACITY_RESERVATION_INTERRUPTION: NoticeKind.SPOT_INTERRUPTION}


def _notice_request(item: _Work, mode: str) -> NoticeRequest:
    assert item.decision is not None
    assert item.instance is not None
    replacement = None
    if item.decision.replace:
        replacement = {"mode": mode, "unavailable_pools": list(item.avoid_pools)}
    return NoticeRequest(
        notice_id=item.entry.key,
        instance_id=item.notice.instance_id,
        private_ip=item.instance.private_ip,
        kind=_WIRE_KIND.get(item.notice.kind, item.notice.kind).value,
        action="drain" if item.decision.action is Action.DRAIN else "analyse",
        drain_deadline=item.decision.drain_deadline,
        replacement=replacement,
    )
