"""The head-node side reads every example request and prints responses shaped like the examples.

Invalid requests are refused by the real CLI: exit code 2 and one line of JSON, before
Ray is touched; a cluster that is not there is exit code 3.
"""

from __future__ import annotations

import base64
import json
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ray_hooks import compat
from ray_hooks.contract import (
    ActorSummary,
    DescribedNode,
    DescribeResponse,
    InvalidRequest,
    JobImpact,
    NodeSummary,
    NoticeResult,
    ObjectsSummary,
    RespondResponse,
    TaskSummary,
    Timings,
    parse_request,
)
from tests.ray_hooks_support import json_shape, notice, request, run_ray_hooks

HERE = Path(__file__).parent
REQUEST_EXAMPLES = sorted(
    p for p in HERE.glob("*.request.json") if json.loads(p.read_text())["operation"] == "respond"
)
RESPOND_EXAMPLES = sorted(HERE.glob("*.response.json"))


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def moment(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def rebuild_respond(example: dict[str, Any]) -> RespondResponse:
    """The response the builder makes from the example's own values."""
    return RespondResponse(
        cluster=example["cluster"],
        request_id=example["request_id"],
        ray_version=example["ray_version"],
        results=tuple(rebuild_result(result) for result in example["results"]),
        timings=Timings(**example["timings"]),
    )


def rebuild_result(result: dict[str, Any]) -> NoticeResult:
    return NoticeResult(
        notice_id=result["notice_id"],
        instance_id=result["instance_id"],
        outcome=result["outcome"],
        message=result["message"],
        ray_node_id=result["ray_node_id"],
        node=None if result["node"] is None else NodeSummary(**result["node"]),
        drain_deadline=moment(result["drain_deadline"]),
        drain_issued_at=moment(result["drain_issued_at"]),
        impacted_jobs=tuple(rebuild_job(job) for job in result["impacted_jobs"]),
    )


def rebuild_job(job: dict[str, Any]) -> JobImpact:
    return JobImpact(
        job_id=job["job_id"],
        tasks_running=job["tasks_running"],
        tasks=tuple(TaskSummary(**task) for task in job["tasks"]),
        actors_alive=job["actors_alive"],
        actors=tuple(
            ActorSummary(**{k: v for k, v in actor.items() if k != "will_restart"})
            for actor in job["actors"]
        ),
        verdict=job["verdict"],
        reasons=tuple(job["reasons"]),
        objects=ObjectsSummary(**job["objects"]),
        compute_redone_s=job["compute_redone_s"],
    )


@pytest.mark.parametrize("path", REQUEST_EXAMPLES, ids=lambda path: path.name)
def test_every_example_request_is_accepted_with_all_its_notices(path: Path) -> None:
    example = load(path)

    parsed = parse_request(path.read_text())

    assert (parsed.cluster, parsed.request_id) == (example["cluster"], example["request_id"])
    assert [
        (n.notice_id, n.instance_id, n.private_ip, n.kind, n.action) for n in parsed.notices
    ] == [
        (n["notice_id"], n["instance_id"], n["private_ip"], n["kind"], n["action"])
        for n in example["notices"]
    ]
    assert [n.drain_deadline for n in parsed.notices] == [
        moment(n["drain_deadline"]) for n in example["notices"]
    ]


@pytest.mark.parametrize(
    "path",
    [path for path in RESPOND_EXAMPLES if "results" in load(path)],
    ids=lambda path: path.name,
)
def test_respond_example_is_exactly_what_the_builder_prints_for_its_values(path: Path) -> None:
    # capacity_requests are built by ray_hooks.capacity: test_capacity_contract.py pins them.
    example = {k: v for k, v in load(path).items() if k != "capacity_requests"}

    built = rebuild_respond(example).to_json()

    assert json_shape(built) == json_shape(example)
    assert built == example


def test_describe_example_is_exactly_what_the_builder_prints_for_its_values() -> None:
    example = load(HERE / "describe.response.json")

    built = DescribeResponse(
        ray_version=example["ray_version"],
        nodes=tuple(DescribedNode(**node) for node in example["nodes"]),
    ).to_json()
    built["ray_support"] = compat.Support(ray_version=example["ray_version"]).to_json()

    assert built == example


def test_a_job_lists_at_most_twenty_tasks_and_actors_but_counts_them_all() -> None:
    tasks = tuple(TaskSummary(f"t{i}", "step", 0, 1.0) for i in range(25))
    actors = tuple(ActorSummary(f"a{i}", "Worker", "", 0, 0, False) for i in range(21))

    job = JobImpact("01000000", len(tasks), tasks, len(actors), actors).to_json()

    assert (job["tasks_running"], len(job["tasks"])) == (25, 20)
    assert (job["actors_alive"], len(job["actors"])) == (21, 20)


def valid_request() -> dict[str, Any]:
    return request(notice("i-0a1b2c3d4e5f60001"))


def with_notice(**changes: Any) -> str:
    document = valid_request()
    document["notices"][0].update(changes)
    return json.dumps(document)


def with_request(**changes: Any) -> str:
    document = valid_request()
    document.update(changes)
    return json.dumps(document)


INVALID_REQUESTS = {
    "not JSON": ("{'version': 1", "not valid JSON"),
    "not an object": ("[1, 2]", "must be a JSON object"),
    "version 2": (with_request(version=2), "unsupported contract version 2"),
    "version as text": (with_request(version="1"), "unsupported contract version '1'"),
    "other operation": (with_request(operation="reconcile"), "operation must be 'respond'"),
    "no cluster": (with_request(cluster=""), "cluster must be a non-empty string"),
    "no notices": (with_request(notices=[]), "notices must hold 1 to 200 items, got 0"),
    "too many notices": (
        with_request(notices=[notice("i-0a1b2c3d4e5f60001")] * 201),
        "notices must hold 1 to 200 items, got 201",
    ),
    "instance id too short": (with_notice(instance_id="i-0a1b2c3"), "not an EC2 instance id"),
    "instance id upper case": (
        with_notice(instance_id="i-0A1B2C3D4E5F60001"),
        "not an EC2 instance id",
    ),
    "instance id with a shell command": (
        with_notice(instance_id="i-0a1b2c3d; rm -rf /"),
        "not an EC2 instance id",
    ),
    "unknown kind": (with_notice(kind="meteor-strike"), "notices[0].kind must be one of"),
    "unknown action": (with_notice(action="terminate"), "notices[0].action must be one of"),
    "deadline without zone": (
        with_notice(drain_deadline="2026-11-22T10:01:45"),
        "drain_deadline must be an ISO-8601 timestamp with a zone",
    ),
    "deadline not a date": (
        with_notice(drain_deadline="2026-02-30T10:01:45Z"),
        "is not a real date and time",
    ),
    "deadline as a number": (with_notice(drain_deadline=1795321767), "ISO-8601"),
    "private ip not an ip": (with_notice(private_ip="10.0.1.300"), "is not an IPv4 address"),
}


@pytest.mark.parametrize("case", INVALID_REQUESTS, ids=str)
def test_invalid_request_is_refused_with_one_line_and_exit_code_2(case: str) -> None:
    text, reason = INVALID_REQUESTS[case]
    with pytest.raises(InvalidRequest):
        parse_request(text)

    run = run_ray_hooks("respond", "--address", "127.0.0.1:9", stdin=text)

    assert run.code == 2, run.stderr
    assert run.document.keys() == {"version", "error"}
    assert run.document["version"] == 1
    assert reason in run.document["error"]
    assert "\n" not in run.document["error"]
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("not base64!", "not valid base64"),
        ('{"version": 1}', "not valid base64"),
        (base64.b64encode(b"\xff\xfe").decode(), "not UTF-8"),
        (base64.b64encode(b"hello").decode(), "not valid JSON"),
        ("", "SSM_Request is not set or empty"),
    ],
    ids=["not base64", "JSON, not base64", "not UTF-8", "base64 of not JSON", "empty"],
)
def test_request_in_environment_must_be_base64_json(value: str, reason: str) -> None:
    run = run_ray_hooks("respond", "--request-b64-env", "SSM_Request", env={"SSM_Request": value})

    assert run.code == 2
    assert reason in run.document["error"]


def test_unknown_operation_is_an_invalid_request() -> None:
    run = run_ray_hooks("respond; rm -rf /")

    assert run.code == 2
    assert "invalid choice" in run.document["error"]


def test_cluster_that_is_not_there_is_exit_code_3_with_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]

    run = run_ray_hooks(
        "respond", "--address", f"127.0.0.1:{closed_port}", stdin=json.dumps(valid_request())
    )

    assert run.code == 3
    assert run.document["version"] == 1
    assert f":{closed_port}" in run.document["error"]
    assert run.seconds < 10


def test_head_node_side_imports_nothing_from_the_lambda_side() -> None:
    import ast

    import ray_hooks

    for module in Path(ray_hooks.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(
                name.split(".")[0] in {"spot_responder", "functions"} for name in names
            ), f"{module.name} imports {names}"
