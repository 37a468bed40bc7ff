"""What we know about an EC2 instance, and the port that tells us."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

# Tags the Ray cluster launcher (`ray up`) puts on every instance it starts.
TAG_CLUSTER = "ray-cluster-name"
TAG_NODE_KIND = "ray-node-type"  # "head" or "worker"
TAG_USER_NODE_TYPE = "ray-user-node-type"  # the available_node_types key


class DirectoryUnavailable(RuntimeError):
    """The instance directory (EC2, or the local cluster) could not be asked."""


@dataclass(frozen=True)
class Instance:
    instance_id: str
    cluster: str | None = None
    node_kind: str | None = None
    node_type: str | None = None
    private_ip: str | None = None
    availability_zone: str | None = None
    instance_type: str | None = None
    lifecycle: str | None = None
    """"spot" or "on-demand"."""
    state: str | None = None
    state_reason: str | None = None
    """EC2's StateReason code of the last state change, e.g. Server.SpotInstanceTermination."""
    capacity_reservation_id: str | None = None

    @property
    def is_ray_node(self) -> bool:
        return bool(self.cluster) and self.node_kind in {"head", "worker"}

    @property
    def is_head(self) -> bool:
        return self.node_kind == "head"

    @property
    def pool(self) -> str | None:
        """The spot capacity pool this instance came from: node type and AZ."""
        if self.node_type is None:
            return None
        return f"{self.node_type}@{self.availability_zone or '-'}"


class InstanceDirectory(Protocol):
    def describe(self, instance_ids: Iterable[str]) -> dict[str, Instance]:
        """The instances that exist, by id; unknown ids are simply absent."""
        ...
