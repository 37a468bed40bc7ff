"""The cluster contract, version 1: the request a head node receives, the response it prints.

The contract is described in tests/contract/README.md, with examples beside it. This module
is the head-node side of it: it parses and validates a request into frozen dataclasses and
turns the results back into the JSON document the Lambda reads. It imports nothing from Ray.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

CONTRACT_VERSION = 1
MAX_NOTICES = 200
#: At most this many tasks and actors are listed per job (the totals count them all).
MAX_LISTED_ITEMS = 20
#: At most this many reasons per job; the last one then says how many more there were.
MAX_REASONS = 10
WILL_RECOVER = "will-recover"
AT_RISK = "at-risk"
LOST = "lost"
VERDICTS = frozenset({WILL_RECOVER, AT_RISK, LOST})

KINDS = frozenset(
    {"spot-interruption", "rebalance-recommendation", "state-change", "scheduled-change"}
)
ACTIONS = frozenset({"drain", "analyse"})
OUTCOMES = frozenset(
    {
        "drained",
        "already-draining",
        "analysed",
        "node-not-found",
        "head-node",
        "drain-rejected",
        "drain-unconfirmed",
        "drain-failed",
    }
)

_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8}([0-9a-f]{9})?$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")

JsonObject = dict[str, Any]


class InvalidRequest(ValueError):
    """The request breaks the contract; the message is one line for people."""


@dataclass(frozen=True)
class Notice:
    """One interruption notice about one EC2 instance, as the Lambda sent it."""

    notice_id: str
    instance_id: str
    private_ip: str | None
    kind: str
    action: str
    drain_deadline: datetime | None


@dataclass(frozen=True)
class RespondRequest:
    """One request per cluster: what to do about which instances."""

    cluster: str
    request_id: str
    notices: tuple[Notice, ...]


# ---------------------------------------------------------------- request parsing


def decode_base64_request(encoded: str) -> str:
    """The request as the SSM document passes it: JSON encoded as base64."""
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"request is not valid base64: {exc}") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest("request is not UTF-8 once decoded from base64") from exc


def parse_envelope(text: str, operation: str) -> dict[str, Any]:
    """The request's JSON object, once it is a v1 request of `operation`."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"request is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidRequest("request must be a JSON object")
    version = document.get("version")
    if type(version) is not int or version != CONTRACT_VERSION:
        raise InvalidRequest(f"unsupported contract version {version!r} (expected 1)")
    if document.get("operation") != operation:
        raise InvalidRequest(
            f"operation must be {operation!r}, got {document.get('operation')!r}"[:300]
        )
    return document


def parse_request(text: str) -> RespondRequest:
    """Parse and validate a v1 `respond` request; raise InvalidRequest with a one-line reason."""
    document = parse_envelope(text, "respond")
    return RespondRequest(
        cluster=_text(document, "cluster", "request"),
        request_id=_text(document, "request_id", "request"),
        notices=_notices(document.get("notices")),
    )


def _notices(value: object) -> tuple[Notice, ...]:
    if not isinstance(value, list):
        raise InvalidRequest("notices must be a list")
    if not 1 <= len(value) <= MAX_NOTICES:
        raise InvalidRequest(f"notices must hold 1 to {MAX_NOTICES} items, got {len(value)}")
    return tuple(_notice(item, f"notices[{index}]") for index, item in enumerate(value))


def _notice(value: object, where: str) -> Notice:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be a JSON object")
    instance_id = _text(value, "instance_id", where)
    if not _INSTANCE_ID.fullmatch(instance_id):
        raise InvalidRequest(
            f"{where}.instance_id {instance_id!r} is not an EC2 instance id "
            "(i- and 8 or 17 lowercase hex digits)"
        )
    return Notice(
        notice_id=_text(value, "notice_id", where),
        instance_id=instance_id,
        private_ip=_private_ip(value.get("private_ip"), f"{where}.private_ip"),
        kind=_choice(value, "kind", KINDS, where),
        action=_choice(value, "action", ACTIONS, where),
        drain_deadline=_timestamp(value.get("drain_deadline"), f"{where}.drain_deadline"),
    )


def _text(document: dict[str, Any], name: str, where: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{where}.{name} must be a non-empty string, got {value!r}")
    if "\n" in value or "\r" in value:
        raise InvalidRequest(f"{where}.{name} must be one line")
    return value


def _choice(document: dict[str, Any], name: str, allowed: frozenset[str], where: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or value not in allowed:
        raise InvalidRequest(
            f"{where}.{name} must be one of {', '.join(sorted(allowed))}; got {value!r}"[:300]
        )
    return value


def _private_ip(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{where} must be an IPv4 address or null, got {value!r}")
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as exc:
        raise InvalidRequest(f"{where} {value!r} is not an IPv4 address") from exc


def _timestamp(value: object, where: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        raise InvalidRequest(
            f"{where} must be an ISO-8601 timestamp with a zone, "
            f"like 2026-11-22T10:01:45Z; got {value!r}"
        )
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidRequest(f"{where} {value!r} is not a real date and time") from exc


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with a Z; milliseconds only when the moment has them."""
    moment = moment.astimezone(UTC)
    if moment.microsecond == 0:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _optional_timestamp(moment: datetime | None) -> str | None:
    return None if moment is None else format_timestamp(moment)


# ---------------------------------------------------------------- response building


@dataclass(frozen=True)
class TaskSummary:
    """A task running on the node."""

    task_id: str
    name: str
    attempt: int
    running_s: float
    #: "task", "actor-call" or "actor-creation" (Ray's NORMAL_TASK, ACTOR_TASK, ...)
    kind: str = "task"
    #: Whether Ray retries it when the node goes, judged by Ray's default retry limits
    #: (Ray 2.60 does not publish a running task's own max_retries; see ray_hooks.verdict).
    retries_left: bool = True

    def to_json(self) -> JsonObject:
        return {
            "task_id": self.task_id,
            "name": self.name,
            "kind": self.kind,
            "attempt": self.attempt,
            "retries_left": self.retries_left,
            "running_s": round(self.running_s, 1),
        }


@dataclass(frozen=True)
class ActorSummary:
    """An actor alive on the node."""

    actor_id: str
    class_name: str
    name: str
    max_restarts: int
    num_restarts: int
    detached: bool
    #: Restarts Ray gave it because its node was preempted (they do not count).
    num_restarts_due_to_preemption: int = 0
    #: Its owner (the process that created it) lives on the interrupted node.
    owner_here: bool = False
    #: The Ray library that replaces it by itself ("Ray Serve", ...), or "".
    library: str = ""

    @property
    def will_restart(self) -> bool:
        """Ray restarts it elsewhere: any max_restarts but 0 (preemption restarts are free)."""
        return self.max_restarts != 0

    def to_json(self) -> JsonObject:
        return {
            "actor_id": self.actor_id,
            "class_name": self.class_name,
            "name": self.name,
            "max_restarts": self.max_restarts,
            "num_restarts": self.num_restarts,
            "num_restarts_due_to_preemption": self.num_restarts_due_to_preemption,
            "detached": self.detached,
            "will_restart": self.will_restart,
            "owner_here": self.owner_here,
            "library": self.library or None,
        }


@dataclass(frozen=True)
class ObjectsSummary:
    """A job's objects with a copy on the node: how many, bytes, how many go with the node."""

    count: int = 0
    bytes: int = 0
    lost_count: int = 0

    def to_json(self) -> JsonObject:
        return {"count": self.count, "bytes": self.bytes, "lost_count": self.lost_count}


@dataclass(frozen=True)
class JobImpact:
    """What one Ray job has on the node: totals, and at most MAX_LISTED_ITEMS of each; whether
    Ray will recover it (`verdict`), why (`reasons`, each naming a task, actor or object), and
    the seconds of task work that Ray will run again (`compute_redone_s`)."""

    job_id: str
    tasks_running: int = 0
    tasks: tuple[TaskSummary, ...] = ()
    actors_alive: int = 0
    actors: tuple[ActorSummary, ...] = ()
    verdict: str = WILL_RECOVER
    reasons: tuple[str, ...] = ()
    objects: ObjectsSummary = ObjectsSummary()
    compute_redone_s: float = 0.0

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}")

    def to_json(self) -> JsonObject:
        return {
            "job_id": self.job_id,
            "verdict": self.verdict,
            "reasons": list(self.reasons[:MAX_REASONS]),
            "tasks_running": self.tasks_running,
            "tasks": [task.to_json() for task in self.tasks[:MAX_LISTED_ITEMS]],
            "actors_alive": self.actors_alive,
            "actors": [actor.to_json() for actor in self.actors[:MAX_LISTED_ITEMS]],
            "objects": self.objects.to_json(),
            "compute_redone_s": round(self.compute_redone_s, 1),
        }


@dataclass(frozen=True)
class NodeSummary:
    """The Ray node an instance maps to, as it was when the request arrived."""

    ip: str
    node_group: str | None
    market_type: str | None
    state: str

    def to_json(self) -> JsonObject:
        return {
            "ip": self.ip,
            "node_group": self.node_group,
            "market_type": self.market_type,
            "state": self.state,
        }


@dataclass(frozen=True)
class NoticeResult:
    """What was done about one notice."""

    notice_id: str
    instance_id: str
    outcome: str
    message: str
    ray_node_id: str | None = None
    node: NodeSummary | None = None
    drain_deadline: datetime | None = None
    drain_issued_at: datetime | None = None
    impacted_jobs: tuple[JobImpact, ...] = ()

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}")

    def to_json(self) -> JsonObject:
        return {
            "notice_id": self.notice_id,
            "instance_id": self.instance_id,
            "outcome": self.outcome,
            "ray_node_id": self.ray_node_id,
            "node": None if self.node is None else self.node.to_json(),
            "drain_deadline": _optional_timestamp(self.drain_deadline),
            "drain_issued_at": _optional_timestamp(self.drain_issued_at),
            "message": self.message,
            "impacted_jobs": [job.to_json() for job in self.impacted_jobs],
        }


@dataclass(frozen=True)
class Timings:
    """Seconds from the start of ray_hooks to the last drain issued, and to the response."""

    drain_s: float
    total_s: float

    def to_json(self) -> JsonObject:
        return {"drain_s": round(self.drain_s, 3), "total_s": round(self.total_s, 3)}


@dataclass(frozen=True)
class RespondResponse:
    """The one document `ray_hooks respond` prints."""

    cluster: str
    request_id: str
    ray_version: str
    results: tuple[NoticeResult, ...]
    timings: Timings

    def to_json(self) -> JsonObject:
        return {
            "version": CONTRACT_VERSION,
            "cluster": self.cluster,
            "request_id": self.request_id,
            "ray_version": self.ray_version,
            "results": [result.to_json() for result in self.results],
            "timings": self.timings.to_json(),
        }


@dataclass(frozen=True)
class DescribedNode:
    """One node as `ray_hooks describe` lists it."""

    ray_node_id: str
    instance_id: str | None
    ip: str
    node_group: str | None
    market_type: str | None
    is_head: bool
    state: str

    def to_json(self) -> JsonObject:
        return {
            "ray_node_id": self.ray_node_id,
            "instance_id": self.instance_id,
            "ip": self.ip,
            "node_group": self.node_group,
            "market_type": self.market_type,
            "is_head": self.is_head,
            "state": self.state,
        }


@dataclass(frozen=True)
class DescribeResponse:
    """The document `ray_hooks describe` prints."""

    ray_version: str
    nodes: tuple[DescribedNode, ...]

    def to_json(self) -> JsonObject:
        return {
            "version": CONTRACT_VERSION,
            "ray_version": self.ray_version,
            "nodes": [node.to_json() for node in self.nodes],
        }


def error_document(message: str) -> JsonObject:
    """What is printed with exit codes 2 and 3: the version and one line."""
    return {"version": CONTRACT_VERSION, "error": " ".join(message.split())}
