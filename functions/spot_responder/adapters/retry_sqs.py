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
