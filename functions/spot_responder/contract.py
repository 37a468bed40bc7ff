"""The Lambda side of the cluster contract, version 1 (tests/contract/README.md)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

VERSION = 1
MAX_NOTICES_PER_REQUEST = 200
#: The head node's answer (exit code 4) when its Ray is outside ray_hooks' supported range.
UNSUPPORTED_RAY = "unsupported-ray"


class ContractError(ValueError):
    """The cluster answered something that is not a v1 response."""


@dataclass(frozen=True)
class NoticeRequest:
    notice_id: str
    instance_id: str
    private_ip: str | None
    kind: str
    action: str
    drain_deadline: datetime | None
    replacement: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "notice_id": self.notice_id,
            "instance_id": self.instance_id,
            "private_ip": self.private_ip,
            "kind": self.kind,
            "action": self.action,
            "drain_deadline": None if self.drain_deadline is None else _iso(self.drain_deadline),
        }
        if self.replacement is not None:
            data["replacement"] = self.replacement
        return data


def build_request(cluster: str, notices: Sequence[NoticeRequest]) -> dict[str, Any]:
    if not 1 <= len(notices) <= MAX_NOTICES_PER_REQUEST:
        raise ValueError(f"a request holds 1 to {MAX_NOTICES_PER_REQUEST} notices")
    return {
        "version": VERSION,
        "operation": "respond",
        "cluster": cluster,
        "request_id": f"req-{uuid.uuid4().hex[:12]}",
        "notices": [n.to_json() for n in notices],
    }


@dataclass(frozen=True)
class NoticeResult:
    notice_id: str
    instance_id: str
    outcome: str
    ray_node_id: str | None
    message: str
    drain_deadline: str | None = None
    drain_issued_at: str | None = None
    node: dict[str, Any] | None = None
    impacted_jobs: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ClusterResponse:
    cluster: str
    request_id: str
    results: dict[str, NoticeResult]
    timings: dict[str, float] = field(default_factory=dict)
    capacity_requests: tuple[dict[str, Any], ...] = ()


def parse_response(data: Any) -> ClusterResponse:
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ContractError("response is not a version 1 object")
    if "error" in data:
        raise ContractError(f"cluster error: {str(data['error'])[:300]}")
    try:
        results = {r.notice_id: r for r in (_result(item) for item in data["results"])}
        return ClusterResponse(
            cluster=str(data["cluster"]),
            request_id=str(data["request_id"]),
            results=results,
            timings={k: float(v) for k, v in (data.get("timings") or {}).items()},
            capacity_requests=tuple(data.get("capacity_requests") or ()),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ContractError(f"malformed response: {exc!r}"[:300]) from None


def unsupported_ray(data: Any) -> str | None:
    """The one-line reason of an `unsupported-ray` answer; None for any other answer."""
    if not isinstance(data, dict) or data.get("outcome") != UNSUPPORTED_RAY:
        return None
    missing = "; ".join(str(feature) for feature in data.get("missing") or ()) or "unknown"
    return (
        f"{UNSUPPORTED_RAY}: Ray {data.get('ray_version')} on the head node "
        f"(supported {data.get('supported_range')}): missing {missing}"
    )[:300]


def _result(item: dict[str, Any]) -> NoticeResult:
    return NoticeResult(
        notice_id=str(item["notice_id"]),
        instance_id=str(item["instance_id"]),
        outcome=str(item["outcome"]),
        ray_node_id=item.get("ray_node_id"),
        message=str(item.get("message", "")),
        drain_deadline=item.get("drain_deadline"),
        drain_issued_at=item.get("drain_issued_at"),
        node=item.get("node"),
        impacted_jobs=tuple(item.get("impacted_jobs") or ()),
    )


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
