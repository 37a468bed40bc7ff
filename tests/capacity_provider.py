"""The fake_multinode provider with a spot market's two habits: pools that run out of
capacity, and instances with EC2-style ids.

Loaded by the head's autoscaler (``provider.type: external``, ``module:
tests.capacity_provider.CapacityLimitedProvider``), so the repository root must be on the
head's ``PYTHONPATH``. Two settings of its own in the provider config:

- ``capacity_file``: a JSON file ``{"<node type>": [[from, until], ...]}`` (wall clock).
  A launch of that type inside a window fails the way EC2 fails it
  (``InsufficientInstanceCapacity``); autoscaler v2 turns the error into a failed launch
  and tries another type. The file is read at every launch, so a benchmark can write the
  windows as its trace unfolds.
- every worker gets the label ``spot-responder/instance-id`` with an ``i-`` id of its own
  (the bundle's workers read theirs from IMDS), so a notice can name one node of a type
  that has several. Ray's node id stays the provider's (``fff...f<n>``), as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE

INSTANCE_ID_LABEL = "spot-responder/instance-id"


class InsufficientInstanceCapacity(RuntimeError):
    """What EC2's RunInstances answers when a pool has no capacity."""


def instance_id_of(provider_node_number: int) -> str:
    """The EC2-style id of the provider's n-th node (17 hex digits, as EC2's)."""
    return f"i-{0x0C0FFEE000000000 + provider_node_number:017x}"


def unavailable(capacity_file: str | None, node_type: str, at: float) -> bool:
    if not capacity_file:
        return False
    path = Path(capacity_file)
    if not path.exists():
        return False
    windows = json.loads(path.read_text() or "{}").get(node_type, [])
    return any(start <= at < until for start, until in windows)


class CapacityLimitedProvider(FakeMultiNodeProvider):
    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        self._capacity_file: str | None = provider_config.get("capacity_file")

    def create_node_with_resources_and_labels(
        self,
        node_config: dict[str, Any],
        tags: dict[str, str],
        count: int,
        resources: dict[str, float],
        labels: dict[str, str],
    ) -> None:
        import time

        node_type = tags[TAG_RAY_USER_NODE_TYPE]
        if unavailable(self._capacity_file, node_type, time.time()):
            raise InsufficientInstanceCapacity(
                f"InsufficientInstanceCapacity: no capacity for {count} {node_type} now"
            )
        super().create_node_with_resources_and_labels(node_config, tags, count, resources, labels)

    def _create_node_with_resources_and_labels(
        self,
        node_config: dict[str, Any],
        tags: dict[str, str],
        count: int,
        resources: dict[str, float],
        labels: dict[str, str],
    ) -> None:
        with self.lock:  # re-entrant: the parent takes it again and numbers the node
            own = {**labels, INSTANCE_ID_LABEL: instance_id_of(self._next_node_id + 1)}
            super()._create_node_with_resources_and_labels(node_config, tags, count, resources, own)
