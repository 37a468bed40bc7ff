"""`ray_hooks describe`: the cluster's nodes with their instance labels.

On a laptop this stands in for the EC2 tags: it tells which instance id each Ray node
plays, so local replay can resolve the instance ids used in the sample events. Like EC2,
which still describes a terminated instance (with its tags) for about an hour, it also
lists the last dead node of an instance that no alive node plays (state DEAD), as long as
the GCS remembers it: a `terminated` state change then still finds its cluster.

It also says what ray_hooks can do with the cluster's Ray (`ray_support`): the supported
range (`compat.supported_range()`), and what is missing or degraded on this Ray.
"""

from __future__ import annotations

from typing import Any

from ray_hooks.cluster import ray_version
from ray_hooks.compat import probe
from ray_hooks.contract import DescribedNode, DescribeResponse, JsonObject
from ray_hooks.nodes import RayNode, list_nodes


def describe(gcs: Any) -> DescribeResponse:
    """Alive and draining nodes, head first, then by instance id; then the departed."""
    known = list_nodes(gcs)
    alive = sorted(
        (node for node in known if node.is_alive),
        key=lambda node: (not node.is_head, node.instance_id or "", node.node_id),
    )
    playing = {node.instance_id for node in alive}
    departed: dict[str, RayNode] = {}
    for node in known:
        if not node.is_alive and node.instance_id and node.instance_id not in playing:
            last = departed.get(node.instance_id)
            if last is None or node.start_time_ms > last.start_time_ms:
                departed[node.instance_id] = node
    nodes = [*alive, *(departed[instance] for instance in sorted(departed))]
    return DescribeResponse(
        ray_version=ray_version(),
        nodes=tuple(
            DescribedNode(
                ray_node_id=node.node_id,
                instance_id=node.instance_id,
                ip=node.ip,
                node_group=node.node_group,
                market_type=node.market_type,
                is_head=node.is_head,
                state=node.state,
            )
            for node in nodes
        ),
    )


def describe_document(gcs: Any) -> JsonObject:
    """The describe response with `ray_support`: the supported range and this Ray's gaps."""
    document = describe(gcs).to_json()
    document["ray_support"] = probe().to_json()
    return document
