"""Bring failed records back within seconds instead of after the queue's visibility timeout.

Lambda needs the queue's visibility timeout to be at least the function's timeout, far
too long inside a two-minute notice window. For each record reported as failed, the
handler makes the message visible again after a few seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from spot_responder.observability import logger


class SqsRetryDelay:
    def __init__(self, sqs: Any, delay_s: int) -> None:
        """`sqs`: a boto3 SQS client."""
        self._sqs = sqs
        self.delay_s = delay_s
        self._urls: dict[str, str] = {}

    def schedule(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            try:
                self._sqs.change_message_visibility(
                    QueueUrl=self._url(record["eventSourceARN"]),
                    ReceiptHandle=record["receiptHandle"],
                    VisibilityTimeout=self.delay_s,
                )
            except (ClientError, BotoCoreError) as exc:
                # The message still comes back, only later: log, do not fail the batch.
                logger.warning(f"could not shorten the retry delay: {exc}")

    def _url(self, queue_arn: str) -> str:
        if queue_arn not in self._urls:
            _, _, _, _, account, name = queue_arn.split(":", 5)
            self._urls[queue_arn] = self._sqs.get_queue_url(
                QueueName=name, QueueOwnerAWSAccountId=account
            )["QueueUrl"]
        return self._urls[queue_arn]


class SqsDeadLetter:
    """Move records to the dead-letter queue once no retry can help (past the drain deadline).

    SQS dead-letters a message only after maxReceiveCount receives, which counts receives,
    not time; the handler sends such a record there itself and lets it be deleted.
    """

    def __init__(self, sqs: Any, queue_url: str) -> None:
        self._sqs = sqs
        self.queue_url = queue_url

    def send(self, records: Iterable[dict[str, Any]], reasons: dict[str, str]) -> set[str]:
        """The message ids that reached the dead-letter queue."""
        sent = set()
        for record in records:
            reason = reasons.get(record["messageId"], "gave up")
            try:
                self._sqs.send_message(
                    QueueUrl=self.queue_url,
                    MessageBody=record["body"],
                    MessageAttributes={
                        "reason": {"DataType": "String", "StringValue": reason[:1000]},
                        "source_message_id": {
                            "DataType": "String",
                            "StringValue": record["messageId"],
                        },
                    },
                )
            except (ClientError, BotoCoreError) as exc:
                logger.warning(f"could not dead-letter {record['messageId']}: {exc}")
                continue
            sent.add(record["messageId"])
        return sent
