"""An InstanceDirectory for a local Ray cluster: node labels stand in for EC2 tags.

A dead Ray node still resolves to its cluster, as EC2 still describes a terminated
instance: `ray_hooks describe` lists the last dead node of an instance no alive node
plays, and it comes back here in state `terminated`.
"""

from __future__ import annotations

from collections.abc import Iterable

from spot_responder.adapters.channel_local import LocalClusterChannel
from spot_responder.channel import ChannelUnavailable
from spot_responder.instances import DirectoryUnavailable, Instance


class RayLabelDirectory:
    """Instances are the nodes that carry the label `spot-responder/instance-id`."""

    def __init__(self, channel: LocalClusterChannel, cluster: str = "local") -> None:
        self._channel = channel
        self._cluster = cluster
        self._known: dict[str, Instance] | None = None

    def describe(self, instance_ids: Iterable[str]) -> dict[str, Instance]:
        known = self._nodes()
        return {i: known[i] for i in instance_ids if i in known}

    def _nodes(self) -> dict[str, Instance]:
        if self._known is None:
            try:
                nodes = self._channel.describe()["nodes"]
            except (ChannelUnavailable, KeyError) as exc:
                raise DirectoryUnavailable(f"cannot list the local Ray nodes: {exc}") from exc
            self._known = {
                node["instance_id"]: Instance(
                    instance_id=node["instance_id"],
                    cluster=self._cluster,
                    node_kind="head" if node.get("is_head") else "worker",
                    node_type=node.get("node_group"),
                    private_ip=node.get("ip"),
                    lifecycle=node.get("market_type"),
                    # A dead Ray node is what EC2 calls terminated; of a live one this
                    # stand-in knows nothing (no EC2 here), so the event is taken at its word.
                    state="terminated" if node.get("state") == "DEAD" else None,
                )
                for node in nodes
                if node.get("instance_id")
            }
        return self._known
