"""Capacity in the JSON contract: `respond`'s capacity_requests and `reconcile`."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ray_hooks.capacity.record import FAILED, CapacityRequest, ReplacementAsk, not_requested
from ray_hooks.capacity.request import ReconcileResult, request_replacements
from ray_hooks.capacity.store import Kv
from ray_hooks.contract import CONTRACT_VERSION, InvalidRequest, RespondResponse, parse_envelope
from ray_hooks.replacement import ReplacementOptions, parse_replacement_options

log = logging.getLogger(__name__)

#: Outcomes after which a notice's node is replaced: drained, or analysed only (a
#: rebalance recommendation handled by replacing the node before any warning comes).
REPLACED_AFTER = frozenset({"drained", "already-draining", "analysed"})


@dataclass(frozen=True)
class HandledNotice:
    """A respond notice after its drain: what `replacements_for` needs to know of it."""

    notice_id: str
    instance_id: str
    outcome: str
    options: ReplacementOptions | None
    ray_node_id: str | None = None
    node_type: str | None = None


@dataclass(frozen=True)
class RespondWithCapacity(RespondResponse):
    """A respond response that also says which replacement capacity was asked for."""

    capacity_requests: tuple[CapacityRequest, ...] = ()

    def to_json(self) -> dict[str, Any]:
        document = super().to_json()
        document["capacity_requests"] = [r.to_json() for r in self.capacity_requests]
        return document


def notice_replacements(text: str) -> tuple[ReplacementOptions | None, ...] | None:
    """Each notice's `replacement` (same order as the notices); None when no notice has one.

    `text` is a respond request that `contract.parse_request` already accepted.
    """
    notices = json.loads(text)["notices"]
    options = tuple(
        parse_replacement_options(notice.get("replacement"), f"notices[{index}].replacement")
        for index, notice in enumerate(notices)
    )
    return options if any(option is not None for option in options) else None


def replacements_for(
    gcs: Kv, notices: Sequence[HandledNotice], **kwargs: Any
) -> tuple[CapacityRequest, ...]:
    """One CapacityRequest per notice that has replacement options (notices without skipped).

    A node that was neither drained nor analysed (not found, the head, refused) is not
    replaced. Never raises: the drains stand whatever happens here.
    """
    wanted = [notice for notice in notices if notice.options is not None]
    asks = [
        ReplacementAsk(
            notice_id=n.notice_id,
            instance_id=n.instance_id,
            options=n.options,
            ray_node_id=n.ray_node_id,
            node_type=n.node_type,
        )
        for n in wanted
        if n.options is not None and n.outcome in REPLACED_AFTER
    ]
    try:
        asked = iter(request_replacements(gcs, asks, **kwargs))
    except Exception as exc:  # a bug here must not cost the response of the drains
        log.exception("replacement capacity failed")
        asked = iter(not_requested(ask, f"internal error: {exc!r}", FAILED) for ask in asks)
    return tuple(
        next(asked)
        if notice.outcome in REPLACED_AFTER
        else not_requested(_ask_of(notice), f"the node was not drained (outcome {notice.outcome})")
        for notice in wanted
    )


def _ask_of(notice: HandledNotice) -> ReplacementAsk:
    return ReplacementAsk(notice.notice_id, notice.instance_id, ReplacementOptions())


@dataclass(frozen=True)
class ReconcileRequest:
    """`{"version": 1, "operation": "reconcile", "cluster": ..., "request_id": ...}`."""

    cluster: str
    request_id: str


def parse_reconcile_request(text: str) -> ReconcileRequest:
    """Parse and validate a v1 `reconcile` request; raise InvalidRequest with a one-line reason."""
    document = parse_envelope(text, "reconcile")
    names = ("cluster", "request_id")
    for name in names:
        value = document.get(name)
        if not isinstance(value, str) or not value.strip() or "\n" in value or "\r" in value:
            raise InvalidRequest(f"request.{name} must be a non-empty one-line string")
    return ReconcileRequest(cluster=document["cluster"], request_id=document["request_id"])


def reconcile_response(
    request: ReconcileRequest, result: ReconcileResult, ray_version: str, total_s: float
) -> dict[str, Any]:
    """The document `ray_hooks reconcile` prints."""
    return {
        "version": CONTRACT_VERSION,
        "cluster": request.cluster,
        "request_id": request.request_id,
        "ray_version": ray_version,
        "released": [r.to_json() for r in result.released],
        "outstanding": [r.to_json() for r in result.outstanding],
        "unavailable_pools": list(result.unavailable_pools),
        "timings": {"total_s": round(total_s, 3)},
    }
