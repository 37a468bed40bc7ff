"""Hypothesis strategies for bad input: events and requests broken every way we could think of.

Everything starts from the real examples (`events/*.json`, `tests/contract/*.request.json`)
and breaks them: cut short, a field deleted or given another JSON type, injection strings
or huge strings in any field, times long past, far ahead or at the edges of the calendar,
unknown sources and detail-types, or no event at all.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from tests.support import ARM_WORKER, EVENTS, HEAD, NOT_RAY, ROOT, X86_WORKER

CONTRACT_EXAMPLES_DIR = ROOT / "tests" / "contract"

BASE_EVENTS = [
    json.loads(path.read_text())
    for path in sorted(EVENTS.glob("*.json"))
    if not path.name.startswith("sqs-")
]
BASE_REQUESTS = [
    json.loads(path.read_text()) for path in sorted(CONTRACT_EXAMPLES_DIR.glob("*.request.json"))
]
KNOWN_INSTANCES = [X86_WORKER, ARM_WORKER, HEAD, NOT_RAY, "i-0b0b0b0b0b0b0b0b1"]

INJECTIONS = [
    "; rm -rf /",
    "$(reboot)",
    "`id`",
    "' OR '1'='1",
    '"; DROP TABLE items; --',
    "\n",
    "\r\n",
    "\x00",
    "\u2028",
    "\u202e",
    "\ud800",  # a lone surrogate: valid as a JSON escape, not as UTF-8
    "\ufeff",
    "../../../etc/passwd",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "%s%s%n",
    "i-0a1b2c3d4e5f60001\n; rm -rf /",
    "i-0a1b2c3d4e5f60001 ",
    "I-0A1B2C3D4E5F60001",
    "i-0a1b2c3d4e5f6000\uff11",  # a full-width digit one
    "\u0000i-0a1b2c3d",
    "🙂" * 3,
]

OFFSETS = st.integers(min_value=-1439, max_value=1439).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
EDGE_TIMES = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+23:59",
    "0001-01-01T00:01:00Z",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:58:30Z",
    "1970-01-01T00:00:00Z",
    "2038-01-19T03:14:08Z",
    "Mon, 01 Jan 0001 00:00:00 GMT",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "2026-02-30T10:00:00Z",
    "2026-11-22T25:00:00Z",
    "2026-11-22T10:00:00",
    "2026-11-22",
    "yesterday",
    "",
]


def times() -> st.SearchStrategy[Any]:
    """Stale, future and edge-of-the-calendar times, as ISO, as HTTP dates, and not times."""
    moments = st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=OFFSETS
    )
    now = datetime.now(UTC)
    near = st.integers(min_value=-(10**9), max_value=10**9).map(
        lambda s: (now + timedelta(seconds=s)).isoformat()
    )
    return st.one_of(
        st.sampled_from(EDGE_TIMES),
        moments.map(lambda m: m.isoformat()),
        moments.map(lambda m: m.strftime("%a, %d %b %Y %H:%M:%S GMT")),
        near,
        st.integers(min_value=-(2**63), max_value=2**63),
    )


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def injected_text() -> st.SearchStrategy[str]:
    return st.builds(
        lambda before, injection, after: before + injection + after,
        st.text(max_size=8),
        st.sampled_from(INJECTIONS),
        st.text(max_size=8),
    )


def huge_text() -> st.SearchStrategy[str]:
    """Strings from 64 KiB to past the 256 KiB an event may hold."""
    return st.tuples(
        st.sampled_from(["A", "i-0", "é", "\n", "🙂"]), st.integers(64 * 1024, 300 * 1024)
    ).map(lambda pair: (pair[0] * pair[1])[: pair[1]])


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every field and item of a JSON document, as paths (the root excluded)."""
    found: list[tuple[Any, ...]] = []
    children: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    for key, child in children:
        found.append((*prefix, key))
        found.extend(paths_of(child, (*prefix, key)))
    return found


def put_at(document: Any, path: tuple[Any, ...], value: Any, *, delete: bool = False) -> None:
    """Put `value` at `path` when the path still exists (earlier mutations may have cut it)."""
    parent = document
    for key in path[:-1]:
        try:
            parent = parent[key]
        except (KeyError, IndexError, TypeError):
            return
    last = path[-1]
    if isinstance(parent, dict) or (isinstance(parent, list) and isinstance(last, int)):
        try:
            if delete:
                del parent[last]
            else:
                parent[last] = value
        except (IndexError, KeyError):
            return


MUTATIONS = ["delete", "retype", "inject", "time", "instance", "rename"]


@st.composite
def broken_document(draw: st.DrawFn, bases: list[dict[str, Any]]) -> dict[str, Any]:
    """One of `bases` with one to four fields broken."""
    document = copy.deepcopy(draw(st.sampled_from(bases)))
    paths = paths_of(document)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(paths))
        mutation = draw(st.sampled_from(MUTATIONS))
        if mutation == "delete":
            put_at(document, path, None, delete=True)
        elif mutation == "retype":
            put_at(document, path, draw(JSON_VALUES))
        elif mutation == "inject":
            put_at(document, path, draw(injected_text()))
        elif mutation == "time":
            put_at(document, path, draw(times()))
        elif mutation == "instance":
            put_at(document, path, draw(st.sampled_from(KNOWN_INSTANCES) | injected_text()))
        elif mutation == "rename" and isinstance(path[-1], str):
            parent_path, key = path[:-1], path[-1]
            parent: Any = document
            for part in parent_path:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if isinstance(parent, dict) and key in parent:
                parent[draw(injected_text())] = parent.pop(key)
    return document


@st.composite
def truncated(draw: st.DrawFn, bases: list[dict[str, Any]]) -> str:
    text = json.dumps(draw(st.sampled_from(bases)))
    return text[: draw(st.integers(min_value=0, max_value=len(text) - 1))]


@st.composite
def foreign_kind(draw: st.DrawFn) -> dict[str, Any]:
    """A real event relabelled: unknown source, unknown detail-type, or near misses."""
    event = copy.deepcopy(draw(st.sampled_from(BASE_EVENTS)))
    near_misses = [
        "aws.ec2 ",
        "AWS.EC2",
        "aws.ec2\n",
        "aws.health",
        "aws.ec2",
        "EC2 Spot Instance Interruption Warning ",
        "EC2 Spot Instance Interruption Warning\x00",
        "ec2 spot instance interruption warning",
        "AWS Health Event",
        "Object Created",
    ]
    field = draw(st.sampled_from(["source", "detail-type", "both"]))
    text = st.sampled_from(near_misses) | st.text(max_size=30) | injected_text()
    if field in {"source", "both"}:
        event["source"] = draw(text)
    if field in {"detail-type", "both"}:
        event["detail-type"] = draw(text)
    return event


@st.composite
def huge_event(draw: st.DrawFn) -> dict[str, Any]:
    event = copy.deepcopy(draw(st.sampled_from(BASE_EVENTS)))
    put_at(event, draw(st.sampled_from(paths_of(event))), draw(huge_text()))
    return event


@st.composite
def valid_event(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed event about a known or unknown instance, at any sane time."""
    event = copy.deepcopy(draw(st.sampled_from(BASE_EVENTS)))
    instance = draw(st.sampled_from([*KNOWN_INSTANCES, "i-0123456789abcdef0", "i-01234567"]))
    detail = event["detail"]
    if "instance-id" in detail:
        detail["instance-id"] = instance
    for entity in detail.get("affectedEntities", []):
        entity["entityValue"] = instance
    event["id"] = draw(st.text(min_size=1, max_size=40) | injected_text())
    return event


def _nested(depth: int, as_object: bool) -> str:
    if as_object:
        return '{"a":' * depth + "1" + "}" * depth
    return "[" * depth + "]" * depth


def deeply_nested() -> st.SearchStrategy[str]:
    """JSON nested deeper than Python's recursion limit, inside the size limit or past it."""
    return st.builds(_nested, st.integers(900, 60_000), st.booleans())


def event_body() -> st.SearchStrategy[str]:
    """One SQS record body: an EventBridge event, broken or not, or not an event at all."""
    as_json = st.one_of(
        broken_document(BASE_EVENTS),
        foreign_kind(),
        valid_event(),
        JSON_VALUES,
    ).map(json.dumps)
    return st.one_of(
        as_json,
        as_json,
        truncated(BASE_EVENTS),
        st.text(max_size=200),
        injected_text(),
        deeply_nested(),
    )


def request_text() -> st.SearchStrategy[str]:
    """A `ray_hooks respond` request on stdin, broken or not."""
    return st.one_of(
        broken_document(BASE_REQUESTS).map(json.dumps),
        broken_document(BASE_REQUESTS).map(json.dumps),
        st.sampled_from(BASE_REQUESTS).map(json.dumps),
        truncated(BASE_REQUESTS),
        JSON_VALUES.map(json.dumps),
        st.text(max_size=200),
        injected_text(),
    )


@st.composite
def timed_event(draw: st.DrawFn) -> dict[str, Any]:
    """A real event sent at any time at all: long past, far ahead, at the calendar's edges."""
    event = copy.deepcopy(draw(st.sampled_from(BASE_EVENTS)))
    event["time"] = draw(times())
    if "startTime" in event["detail"]:
        event["detail"]["startTime"] = draw(times())
    return event
