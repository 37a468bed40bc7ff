"""The InstanceDirectory in AWS: EC2 DescribeInstances and the tags `ray up` sets."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from spot_responder.instances import (
    TAG_CLUSTER,
    TAG_NODE_KIND,
    TAG_USER_NODE_TYPE,
    DirectoryUnavailable,
    Instance,
)

FILTER_CHUNK = 199  # DescribeInstances takes at most 200 values per filter


class Ec2Directory:
    def __init__(self, ec2: Any) -> None:
        """`ec2`: a boto3 EC2 client."""
        self._ec2 = ec2

    def describe(self, instance_ids: Iterable[str]) -> dict[str, Instance]:
        # A filter (not InstanceIds=) so one unknown id does not fail the whole call.
        ids = sorted(set(instance_ids))
        found: dict[str, Instance] = {}
        for start in range(0, len(ids), FILTER_CHUNK):
            chunk = ids[start : start + FILTER_CHUNK]
            for raw in self._instances([{"Name": "instance-id", "Values": chunk}]):
                instance = _instance(raw)
                found[instance.instance_id] = instance
        return found

    def head_of(self, cluster: str) -> Instance | None:
        """The running head node of a Ray cluster, found by the tags `ray up` sets."""
        heads = [
            _instance(raw)
            for raw in self._instances(
                [
                    {"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]},
                    {"Name": f"tag:{TAG_NODE_KIND}", "Values": ["head"]},
                    {"Name": "instance-state-name", "Values": ["running"]},
                ]
            )
        ]
        return heads[0] if heads else None

    def clusters_with_heads(self) -> list[str]:
        """Every Ray cluster that has a running head node in this account and region."""
        heads = self._instances(
            [
                {"Name": f"tag:{TAG_NODE_KIND}", "Values": ["head"]},
                {"Name": "instance-state-name", "Values": ["running"]},
            ]
        )
        return sorted({c for c in (_instance(raw).cluster for raw in heads) if c})

    def _instances(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            pages = self._ec2.get_paginator("describe_instances").paginate(Filters=filters)
            return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        except (ClientError, BotoCoreError) as exc:
            raise DirectoryUnavailable(f"EC2 DescribeInstances failed: {exc}") from exc


def _instance(raw: dict[str, Any]) -> Instance:
    tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
    return Instance(
        instance_id=raw["InstanceId"],
        cluster=tags.get(TAG_CLUSTER),
        node_kind=tags.get(TAG_NODE_KIND),
        node_type=tags.get(TAG_USER_NODE_TYPE),
        private_ip=raw.get("PrivateIpAddress"),
        availability_zone=raw.get("Placement", {}).get("AvailabilityZone"),
        instance_type=raw.get("InstanceType"),
        lifecycle="spot" if raw.get("InstanceLifecycle") == "spot" else "on-demand",
        state=raw.get("State", {}).get("Name"),
        state_reason=raw.get("StateReason", {}).get("Code"),
        capacity_reservation_id=raw.get("CapacityReservationId"),
    )
