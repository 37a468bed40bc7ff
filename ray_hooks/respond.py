"""`ray_hooks respond`: find each notice's node, drain first, then analyse, then answer.

Every drain is issued before any analysis starts: the drain is what saves work, and it must
not wait for the state API. The analysis is best effort - when Ray cannot say what runs on
a node, the drains still stand and the message says the impact is unknown.

Between the drains and the analysis, notices that carry `replacement` options get their
replacement capacity asked of the autoscaler (ray_hooks.capacity); never before a drain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ray_hooks.capacity import (
    CapacityRequest,
    HandledNotice,
    RespondWithCapacity,
    replacements_for,
)
from ray_hooks.cluster import ClusterUnreachable, ray_version
from ray_hooks.contract import (
    JobImpact,
    Notice,
    NoticeResult,
    RespondRequest,
    RespondResponse,
    Timings,
)
from ray_hooks.drain import (
    ALREADY_DRAINING,
    DRAIN_FAILED,
    DRAIN_REJECTED,
    DRAIN_UNCONFIRMED,
    DRAINED,
    Drain,
    DrainOrder,
    confirm,
    earliest,
    send_drains,
)
from ray_hooks.impact import node_impacts
from ray_hooks.nodes import NodeMatch, RayNode, find_node, list_nodes
from ray_hooks.outcomes import remember as remember_verdicts
from ray_hooks.replacement import ReplacementOptions

log = logging.getLogger(__name__)

ANALYSED = "analysed"
NODE_NOT_FOUND = "node-not-found"
#: Outcomes after which the node is still there to be analysed.
_ANALYSED_AFTER = frozenset(
    {DRAINED, ALREADY_DRAINING, ANALYSED, DRAIN_REJECTED, DRAIN_UNCONFIRMED, DRAIN_FAILED}
)

#: (address, gcs, {node id: whether it dies as a preempted node}) -> impacts by node id.
ImpactAnalysis = Callable[[str, Any, Mapping[str, bool]], dict[str, tuple[JobImpact, ...]]]
#: Outcomes after which the node dies as a preempted node: drained, with a deadline, by now.
_PREEMPTED_AFTER = frozenset({DRAINED, ALREADY_DRAINING})


@dataclass(frozen=True)
class _Handled:
    """A notice after its node was looked up and, if asked, drained."""

    notice: Notice
    node: RayNode | None
    outcome: str
    message: str
    drain: Drain | None = None


def respond(
    request: RespondRequest,
    address: str,
    gcs: Any,
    started: float,
    analysis: ImpactAnalysis = node_impacts,
    replacements: Sequence[ReplacementOptions | None] | None = None,
    before_analysis: Callable[[], None] | None = None,
) -> RespondResponse:
    """Handle every notice of the request; `started` is the time.perf_counter() of the start.

    `replacements`: each notice's replacement options, same order (None: no notice has any).
    `before_analysis`: called once the drains and capacity requests are out.
    """
    nodes = _nodes(gcs)
    matches, sent = _drain(gcs, request, nodes)
    drain_s = time.perf_counter() - started
    handled = _outcomes(matches, confirm(gcs, sent))
    capacity = _replace(gcs, handled, replacements)
    if before_analysis is not None:
        before_analysis()
    impacts, unknown = _analyse(address, gcs, handled, analysis)
    results = tuple(_result(item, impacts, unknown) for item in handled)
    remember_verdicts(gcs, results)
    response = RespondResponse(
        cluster=request.cluster,
        request_id=request.request_id,
        ray_version=ray_version(),
        results=results,
        timings=Timings(drain_s=drain_s, total_s=time.perf_counter() - started),
    )
    if capacity is None:
        return response
    return RespondWithCapacity(**vars(response), capacity_requests=capacity)


def _nodes(gcs: Any) -> tuple[RayNode, ...]:
    try:
        return list_nodes(gcs)
    except Exception as exc:  # ray.exceptions.RpcError when the GCS stops answering
        raise ClusterUnreachable(f"cannot list the Ray nodes: {exc}") from exc


def _drain(
    gcs: Any, request: RespondRequest, nodes: tuple[RayNode, ...]
) -> tuple[list[tuple[Notice, NodeMatch]], dict[str, Drain]]:
    """Find each notice's node, then drain every node once, side by side, with the earliest
    deadline its notices gave (several notices for one node in one request drain it once)."""
    matches = [
        (notice, find_node(nodes, notice.instance_id, notice.private_ip))
        for notice in request.notices
    ]
    asking: dict[str, list[Notice]] = {}
    found: dict[str, RayNode] = {}
    for notice, match in matches:
        if match.node is not None and (notice.action == "drain" or match.node.is_head):
            asking.setdefault(match.node.node_id, []).append(notice)
            found[match.node.node_id] = match.node
    drains = send_drains(
        gcs,
        [
            DrainOrder(
                node=found[node_id],
                deadline=earliest(notice.drain_deadline for notice in notices),
                reason_message=_reason(request, notices[0]),
            )
            for node_id, notices in asking.items()
        ],
    )
    return matches, drains


def _outcomes(matches: list[tuple[Notice, NodeMatch]], drains: dict[str, Drain]) -> list[_Handled]:
    return [_handled(notice, match, drains) for notice, match in matches]


def _handled(notice: Notice, match: NodeMatch, drains: dict[str, Drain]) -> _Handled:
    node = match.node
    if node is None:
        return _Handled(notice, None, NODE_NOT_FOUND, match.explanation)
    how = f"; {match.explanation}" if match.found_by == "ip" else ""
    drain = drains.get(node.node_id)
    if drain is None:
        return _Handled(notice, node, ANALYSED, f"analysed only, not drained{how}")
    return _Handled(notice, node, drain.outcome, drain.message + how, drain)


def _reason(request: RespondRequest, notice: Notice) -> str:
    """What Ray records as the reason (a preempted node dies 'Terminated due to preemption: …')."""
    return (
        f"spot-responder: {notice.kind} notice for {notice.instance_id} "
        f"(request {request.request_id})"
    )


def _analyse(
    address: str, gcs: Any, handled: list[_Handled], analysis: ImpactAnalysis
) -> tuple[dict[str, tuple[JobImpact, ...]], str]:
    node_ids: dict[str, bool] = {}
    for item in handled:
        if item.node is not None and item.outcome in _ANALYSED_AFTER:
            preempted = item.outcome in _PREEMPTED_AFTER
            node_ids[item.node.node_id] = node_ids.get(item.node.node_id, False) or preempted
    if not node_ids:
        return {}, ""
    try:
        return analysis(address, gcs, node_ids), ""
    except Exception as exc:  # the drains stand; say the impact is unknown
        log.exception("impact analysis failed")
        return {}, " ".join(f"impact unknown: {exc}".split())


def _result(
    item: _Handled, impacts: dict[str, tuple[JobImpact, ...]], unknown: str
) -> NoticeResult:
    node = item.node
    message = item.message
    if node is not None and item.outcome in _ANALYSED_AFTER and unknown:
        message = f"{message}; {unknown}"
    return NoticeResult(
        notice_id=item.notice.notice_id,
        instance_id=item.notice.instance_id,
        outcome=item.outcome,
        message=message,
        ray_node_id=None if node is None else node.node_id,
        node=None if node is None else node.summary(),
        drain_deadline=None if item.drain is None else item.drain.deadline,
        drain_issued_at=None if item.drain is None else item.drain.issued_at,
        impacted_jobs=impacts.get(node.node_id, ()) if node is not None else (),
    )


# ---------------------------------------------------------------- replacement capacity


def _replace(
    gcs: Any, handled: list[_Handled], replacements: Sequence[ReplacementOptions | None] | None
) -> tuple[CapacityRequest, ...] | None:
    """Ask for the replacements of the drained nodes whose notice asked (ray_hooks.capacity)."""
    if replacements is None:
        return None
    return replacements_for(
        gcs,
        [
            HandledNotice(
                notice_id=item.notice.notice_id,
                instance_id=item.notice.instance_id,
                outcome=item.outcome,
                options=options,
                ray_node_id=None if item.node is None else item.node.node_id,
                node_type=None if item.node is None else item.node.node_group,
            )
            for item, options in zip(handled, replacements, strict=True)
        ],
    )
