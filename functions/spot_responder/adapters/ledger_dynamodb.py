"""The ledger in DynamoDB (the table `LedgerTable` of template.yaml)."""

from __future__ import annotations

import json
from typing import Any

from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import BotoCoreError, ClientError

from spot_responder.ledger import (
    JOB_SK_PREFIX,
    NOTICE_SK,
    ConditionalLedger,
    JobHit,
    LedgerEntry,
    LedgerUnavailable,
    job_hits_of,
)

JOB_INDEX = "by-job"


class DynamoDbLedger(ConditionalLedger):
    def __init__(self, table: Any) -> None:
        """`table`: a boto3 DynamoDB Table resource."""
        self._table = table

    def _read(self, key: str) -> LedgerEntry | None:
        try:
            item = self._table.get_item(Key={"pk": key, "sk": NOTICE_SK}, ConsistentRead=True).get(
                "Item"
            )
        except (ClientError, BotoCoreError) as exc:
            raise LedgerUnavailable(f"ledger read failed: {exc}") from exc
        return None if item is None else _entry_from_item(item)

    def _write_if(self, entry: LedgerEntry, expected_updated_at: str | None) -> bool:
        condition: Any = (
            Attr("pk").not_exists()
            if expected_updated_at is None
            else Attr("updated_at").eq(expected_updated_at)
        )
        try:
            self._table.put_item(Item=_item_of(entry), ConditionExpression=condition)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise LedgerUnavailable(f"ledger write failed: {exc}") from exc
        except BotoCoreError as exc:
            raise LedgerUnavailable(f"ledger write failed: {exc}") from exc
        return True

    def _write_jobs(self, entry: LedgerEntry) -> None:
        hits = job_hits_of(entry)
        if not hits:
            return
        try:
            with self._table.batch_writer(overwrite_by_pkeys=["pk", "sk"]) as batch:
                for hit in hits:
                    batch.put_item(Item=_job_item_of(entry, hit))
        except (ClientError, BotoCoreError) as exc:
            raise LedgerUnavailable(f"ledger write failed: {exc}") from exc

    def entries(self, limit: int = 1000) -> list[LedgerEntry]:
        items = self._scan(Attr("sk").eq(NOTICE_SK))
        entries = sorted(
            (_entry_from_item(i) for i in items), key=lambda e: e.recorded_at, reverse=True
        )
        return entries[:limit]

    def job_hits(self, cluster_job_key: str | None = None) -> list[JobHit]:
        if cluster_job_key is None:
            items = self._scan(Attr("sk").begins_with(JOB_SK_PREFIX))
        else:
            items = self._query_job(cluster_job_key)
        hits = [_hit_from_item(i) for i in items]
        return sorted(hits, key=lambda h: (h.job_key, h.recorded_at))

    def _query_job(self, cluster_job_key: str) -> list[dict[str, Any]]:
        return self._all_pages(
            self._table.query,
            IndexName=JOB_INDEX,
            KeyConditionExpression=Key("job_key").eq(cluster_job_key),
        )

    def _scan(self, condition: Any) -> list[dict[str, Any]]:
        return self._all_pages(self._table.scan, FilterExpression=condition)

    @staticmethod
    def _all_pages(call: Any, **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        try:
            while True:
                page = call(**kwargs)
                items.extend(page.get("Items", []))
                if "LastEvaluatedKey" not in page:
                    return items
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except (ClientError, BotoCoreError) as exc:
            raise LedgerUnavailable(f"ledger read failed: {exc}") from exc


def _item_of(entry: LedgerEntry) -> dict[str, Any]:
    data = entry.to_dict()
    item: dict[str, Any] = {k: v for k, v in data.items() if v is not None and v != ""}
    item["pk"], item["sk"] = entry.key, NOTICE_SK
    # Nested job impacts hold floats, which DynamoDB's number type rejects: keep them JSON.
    item["impacted_jobs"] = json.dumps(data["impacted_jobs"])
    if entry.replacement is not None:
        item["replacement"] = json.dumps(entry.replacement)
    item.pop("key")
    return item


def _entry_from_item(item: dict[str, Any]) -> LedgerEntry:
    data = {k: v for k, v in item.items() if k not in {"pk", "sk"}}
    data["key"] = item["pk"]
    data.setdefault("instance_id", None)  # not stored when None (rejected, unhandled)
    data["impacted_jobs"] = json.loads(item.get("impacted_jobs") or "[]")
    if item.get("replacement"):
        data["replacement"] = json.loads(item["replacement"])
    return LedgerEntry.from_dict(data)


def _job_item_of(entry: LedgerEntry, hit: JobHit) -> dict[str, Any]:
    item: dict[str, Any] = {
        "pk": entry.key,
        "sk": JOB_SK_PREFIX + hit.job_id,
        "job_key": hit.job_key,
        "recorded_at": hit.recorded_at,
        "cluster": hit.cluster,
        "job_id": hit.job_id,
        "kind": hit.kind,
        "status": hit.status,
        "impact": json.dumps(hit.impact),
        "expires_at": entry.expires_at,
    }
    if hit.instance_id:
        item["instance_id"] = hit.instance_id
    return item


def _hit_from_item(item: dict[str, Any]) -> JobHit:
    return JobHit(
        cluster=item["cluster"],
        job_id=item["job_id"],
        notice_key=item["pk"],
        instance_id=item.get("instance_id"),
        kind=item["kind"],
        status=item["status"],
        recorded_at=item["recorded_at"],
        impact=json.loads(item.get("impact") or "{}"),
    )
