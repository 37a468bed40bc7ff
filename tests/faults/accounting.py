"""The queue as the Lambda sees it, and the books the fault and bad-input suites keep.

`NoticeQueue` plays SQS with its redrive policy: a batch of at most BatchSize records, a
record reported as failed (or a batch whose invocation died) comes back with its receive
count raised, and after `maxReceiveCount` receives a failed record goes to the dead-letter
queue. Message ids stay the same across deliveries, as in SQS.

The invariant every test here asserts, per batch and over a whole run:

    records in = records settled (handled, rejected) + records retried / dead-lettered

A record is dead-lettered by the queue (its last receive failed) or by the handler itself
(no retry could land before the notice's drain deadline: it sends it to the dead-letter
queue and lets the queue delete it).

and the ledger says what happened to every notice: a settled record's notices have a
final status, a dead-lettered record's notices say `dead-lettered`.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from spot_responder.ledger import Ledger, Status
from spot_responder.responder import BatchReport, RecordStatus
from tests import cfn

SETTLED = {RecordStatus.HANDLED, RecordStatus.REJECTED}
FINAL = frozenset(Status) - {Status.IN_PROGRESS, Status.FAILED, Status.DEAD_LETTERED}
QUEUE_ARN = "arn:aws:sqs:us-west-2:123456789012:notices"


def queue_settings() -> dict[str, int]:
    """What template.yaml declares for the notice queue and its event source mapping."""
    queue = cfn.resource("NoticeQueue")["Properties"]
    mapping = cfn.resource("ResponderFunction")["Properties"]["Events"]["Notices"]["Properties"]
    return {
        "max_receive_count": int(queue["RedrivePolicy"]["maxReceiveCount"]),
        "visibility_timeout_s": int(queue["VisibilityTimeout"]),
        "batch_size": int(mapping["BatchSize"]),
    }


@dataclass
class Message:
    message_id: str
    body: str
    receives: int = 0


def sqs_record(message: Message) -> dict[str, Any]:
    return {
        "messageId": message.message_id,
        "receiptHandle": f"handle-{message.message_id}-{message.receives}",
        "body": message.body,
        "attributes": {"ApproximateReceiveCount": str(message.receives)},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": "us-west-2",
    }


@dataclass
class NoticeQueue:
    """SQS with a redrive policy, delivering batches to one Lambda at a time."""

    max_receive_count: int
    batch_size: int = 10
    waiting: deque[Message] = field(default_factory=deque)
    settled: dict[str, RecordStatus] = field(default_factory=dict)
    dead_lettered: list[Message] = field(default_factory=list)
    notice_keys: dict[str, set[str]] = field(default_factory=dict)
    """The ledger keys each message's deliveries touched."""
    not_ours: set[str] = field(default_factory=set)
    """Messages with a notice about an instance that is no served Ray node (not stored)."""
    sent_in: int = 0

    def send(self, *bodies: dict[str, Any] | str) -> list[str]:
        ids = []
        for body in bodies:
            text = body if isinstance(body, str) else json.dumps(body)
            message = Message(str(uuid.uuid4()), text)
            self.waiting.append(message)
            self.sent_in += 1
            ids.append(message.message_id)
        return ids

    def receive(self) -> tuple[dict[str, Any], list[Message]] | None:
        """The next batch as an SQS event for the handler, or None when the queue is empty."""
        if not self.waiting:
            return None
        batch = [self.waiting.popleft() for _ in range(min(self.batch_size, len(self.waiting)))]
        for message in batch:
            message.receives += 1
        return {"Records": [sqs_record(m) for m in batch]}, batch

    def settle(self, batch: list[Message], response: dict[str, Any], report: BatchReport) -> None:
        """Delete what the handler settled; give back (or dead-letter) what it failed."""
        assert_batch_accounted([m.message_id for m in batch], response, report)
        for item in report.notices:
            if not item.stored:
                assert item.entry.status is Status.IGNORED, item.entry
                self.not_ours.add(item.message_id)
                continue
            self.notice_keys.setdefault(item.message_id, set()).add(item.entry.key)
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        given_up = set(report.to_dead_letter())
        for message in batch:
            if message.message_id in failed:
                self._give_back(message)
            elif message.message_id in given_up:
                self.dead_lettered.append(message)
            else:
                self.settled[message.message_id] = report.statuses[message.message_id]

    def died(self, batch: list[Message]) -> None:
        """The invocation died (timed out): after the visibility timeout every record is back."""
        for message in batch:
            self._give_back(message)

    def _give_back(self, message: Message) -> None:
        if message.receives >= self.max_receive_count:
            self.dead_lettered.append(message)
        else:
            self.waiting.append(message)

    @property
    def accounted(self) -> bool:
        """Count in = count settled + count dead-lettered (once nothing is waiting)."""
        return self.sent_in == len(self.settled) + len(self.dead_lettered) + len(self.waiting)


def assert_batch_accounted(
    message_ids: list[str], response: dict[str, Any], report: BatchReport
) -> None:
    """Every record of the batch is settled or given back, none both, none lost."""
    failed = [f["itemIdentifier"] for f in response["batchItemFailures"]]
    settled = [m for m in message_ids if report.statuses.get(m) in SETTLED]
    given_up = report.to_dead_letter()
    assert sorted(failed) == sorted(report.to_retry())
    assert not set(failed) & set(settled)
    assert not set(given_up) & (set(failed) | set(settled))
    assert len(message_ids) == len(settled) + len(failed) + len(given_up), (
        message_ids,
        report.statuses,
    )
    assert set(message_ids) == set(settled) | set(failed) | set(given_up)
    for message_id in [*failed, *given_up]:
        assert report.reasons.get(message_id), f"retried record {message_id} without a reason"


def assert_ledger_accounts_for(queue: NoticeQueue, ledger: Ledger) -> None:
    """The whole run is accounted for, and the ledger says what happened to every notice."""
    assert not queue.waiting, "the run is not over"
    assert queue.accounted, (queue.sent_in, len(queue.settled), len(queue.dead_lettered))
    for message_id in queue.settled:
        keys = queue.notice_keys.get(message_id, set())
        assert keys or message_id in queue.not_ours, f"settled record {message_id} left nothing"
        for key in keys:
            entry = ledger.get(key)
            assert entry is not None, f"no ledger entry {key}"
            assert entry.status in FINAL, f"settled notice {key} is {entry.status}"
    for message in queue.dead_lettered:
        keys = queue.notice_keys.get(message.message_id)
        assert keys, f"dead-lettered record {message.message_id} left nothing in the ledger"
        for key in keys:
            entry = ledger.get(key)
            assert entry is not None, f"no ledger entry {key}"
            assert entry.status is Status.DEAD_LETTERED, f"dead-lettered {key} is {entry.status}"
