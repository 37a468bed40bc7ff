"""The Lambda side builds requests and reads responses exactly as the shared examples show."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spot_responder.contract import (
    ContractError,
    NoticeRequest,
    build_request,
    parse_response,
)

HERE = Path(__file__).parent


def example(name):
    return json.loads((HERE / name).read_text())


def without_deadline(notice):
    return {k: v for k, v in notice.items() if k != "drain_deadline"}


def deadline(notice):
    return datetime.fromisoformat(notice["drain_deadline"])


def shape(value):
    """Keys and JSON types, recursively; list items by the first one."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def test_built_request_has_the_shape_of_the_example():
    sample = example("drain-two-workers.request.json")
    notices = [
        NoticeRequest(
            notice_id=n["notice_id"],
            instance_id=n["instance_id"],
            private_ip=n["private_ip"],
            kind=n["kind"],
            action=n["action"],
            drain_deadline=datetime.fromisoformat(n["drain_deadline"]),
        )
        for n in sample["notices"]
    ]

    built = build_request(sample["cluster"], notices)

    assert [without_deadline(n) for n in built["notices"]] == [
        without_deadline(n) for n in sample["notices"]
    ]
    assert [deadline(n) for n in built["notices"]] == [deadline(n) for n in sample["notices"]]
    assert {k: v for k, v in built.items() if k not in {"request_id", "notices"}} == {
        k: v for k, v in sample.items() if k not in {"request_id", "notices"}
    }
    assert shape(built)["request_id"] == "str"


def test_deadline_is_sent_as_utc_with_a_z():
    notice = NoticeRequest(
        "k",
        "i-0a1b2c3d4e5f60001",
        None,
        "spot-interruption",
        "drain",
        datetime(2026, 11, 22, 10, 1, 45, 500000, tzinfo=UTC),
    )

    (sent,) = build_request("c", [notice])["notices"]

    assert sent["drain_deadline"] == "2026-11-22T10:01:45.500Z"


RESPOND_EXAMPLES = sorted(
    p.name for p in HERE.glob("*.response.json") if "results" in json.loads(p.read_text())
)


@pytest.mark.parametrize("name", RESPOND_EXAMPLES)
def test_every_response_example_is_read(name):
    data = example(name)

    response = parse_response(data)

    assert set(response.results) == {r["notice_id"] for r in data["results"]}
    for result in data["results"]:
        parsed = response.results[result["notice_id"]]
        assert parsed.outcome == result["outcome"]
        assert [j["job_id"] for j in parsed.impacted_jobs] == [
            j["job_id"] for j in result["impacted_jobs"]
        ]


@pytest.mark.parametrize(
    "data",
    [
        {"version": 2, "results": []},
        {"version": 1, "error": "cluster unreachable"},
        {"version": 1, "cluster": "c", "request_id": "r", "results": [{"notice_id": "x"}]},
        [],
    ],
)
def test_anything_else_is_a_contract_error(data):
    with pytest.raises(ContractError):
        parse_response(data)


def test_a_request_holds_between_one_and_two_hundred_notices():
    with pytest.raises(ValueError, match="1 to 200"):
        build_request("c", [])
