"""The CapacityRequest record: one replacement asked for one interrupted instance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ray_hooks.replacement import ReplacementOptions

#: Statuses of a capacity request.
REQUESTED = "requested"  # in the demand sent to the autoscaler; outstanding
NO_REPLACEMENT = "no-replacement"  # nothing asked (reason says why)
FAILED = "failed"  # chosen and kept, but the autoscaler was not reached; reconcile resends
JOINED = "joined"  # released: its node joined and the interrupted node is gone
EXPIRED = "expired"  # released: nothing joined (or the interrupted node lived on) until expires_at


@dataclass(frozen=True)
class CapacityRequest:
    """One replacement asked for one interrupted instance (or why none was)."""

    notice_id: str
    instance_id: str
    status: str
    reason: str
    node_type: str | None = None
    market: str | None = None
    bundles: tuple[Mapping[str, float], ...] = ()
    label_selector: Mapping[str, str] = field(default_factory=dict)
    steered_by: str | None = None
    requested_at: datetime | None = None
    expires_at: datetime | None = None
    #: The node that replaces it, once one joined (outstanding until the interrupted one is gone).
    joined_node_id: str | None = None
    #: The Ray node of the interrupted instance, when it was known.
    interrupted_node_id: str | None = None

    @property
    def is_outstanding(self) -> bool:
        return self.status in (REQUESTED, FAILED)

    @property
    def is_waiting(self) -> bool:
        """Outstanding and no node has joined for it yet."""
        return self.is_outstanding and self.joined_node_id is None

    def to_json(self) -> dict[str, Any]:
        return {
            "notice_id": self.notice_id,
            "instance_id": self.instance_id,
            "node_type": self.node_type,
            "market": self.market,
            "bundles": [dict(bundle) for bundle in self.bundles],
            "label_selector": dict(self.label_selector),
            "steered_by": self.steered_by,
            "requested_at": iso(self.requested_at),
            "expires_at": iso(self.expires_at),
            "status": self.status,
            "reason": " ".join(self.reason.split()),
            "joined_node_id": self.joined_node_id,
            "interrupted_node_id": self.interrupted_node_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CapacityRequest:
        return cls(
            notice_id=str(data["notice_id"]),
            instance_id=str(data["instance_id"]),
            status=str(data["status"]),
            reason=str(data["reason"]),
            node_type=data.get("node_type"),
            market=data.get("market"),
            bundles=tuple(
                {str(k): float(v) for k, v in b.items()} for b in data.get("bundles") or ()
            ),
            label_selector={str(k): str(v) for k, v in (data.get("label_selector") or {}).items()},
            steered_by=data.get("steered_by"),
            requested_at=parse_iso(data.get("requested_at")),
            expires_at=parse_iso(data.get("expires_at")),
            joined_node_id=data.get("joined_node_id"),
            interrupted_node_id=data.get("interrupted_node_id"),
        )


@dataclass(frozen=True)
class ReplacementAsk:
    """A drained node to replace: which notice, which node, and the notice's options."""

    notice_id: str
    instance_id: str
    options: ReplacementOptions
    ray_node_id: str | None = None
    #: The node's type and zone when the caller knows them; else read from its Ray labels.
    node_type: str | None = None
    zone: str | None = None


def not_requested(
    ask: ReplacementAsk, reason: str, status: str = NO_REPLACEMENT
) -> CapacityRequest:
    return CapacityRequest(
        notice_id=ask.notice_id,
        instance_id=ask.instance_id,
        status=status,
        reason=reason,
        interrupted_node_id=ask.ray_node_id,
    )


def failed(request: CapacityRequest, exc: Exception) -> CapacityRequest:
    return replace(
        request, status=FAILED, reason=f"{request.reason}; not sent, reconcile retries: {exc}"
    )


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value).astimezone(UTC)
