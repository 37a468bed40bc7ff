"""What `respond` does for each notice, against a fake GCS: drain first, never the head."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ray_hooks.contract import JobImpact, RespondRequest, parse_request
from ray_hooks.respond import respond
from tests.ray_hooks_support import notice, request

HEAD = "i-0d0d0d0d0d0d0d0d0"
X86 = "i-0a1b2c3d4e5f60001"
ARM = "i-0a1b2c3d4e5f60002"
NODE_IDS = {HEAD: "0d" * 28, X86: "01" * 28, ARM: "02" * 28}


class FakeGcs:
    """The GcsClient calls ray_hooks makes, recorded; nodes as the GCS reports them."""

    def __init__(self, draining: dict[str, int] | None = None, rejection: str = "") -> None:
        self.draining = draining or {}
        self.rejection = rejection
        self.events: list[tuple[str, Any]] = []

    def get_all_node_info(self, timeout: float | None = None) -> dict[bytes, Any]:
        from ray.core.generated import gcs_pb2

        infos = {}
        for instance_id, node_id in NODE_IDS.items():
            info = gcs_pb2.GcsNodeInfo(
                node_id=bytes.fromhex(node_id),
                node_manager_address="10.0.1.10",
                is_head_node=instance_id == HEAD,
            )
            info.labels["spot-responder/instance-id"] = instance_id
            infos[info.node_id] = info
        return infos

    def get_draining_nodes(self, timeout: float | None = None) -> dict[str, int]:
        return dict(self.draining)

    def drain_node(
        self,
        node_id: str,
        reason: int,
        reason_message: str,
        deadline_timestamp_ms: int,
        timeout: float | None = None,
    ) -> tuple[bool, str]:
        self.events.append(("drain", (node_id, reason_message, deadline_timestamp_ms)))
        return (not self.rejection, self.rejection)


class FakeAnalysis:
    def __init__(self, gcs: FakeGcs, fails: bool = False) -> None:
        self.gcs = gcs
        self.fails = fails

    def __call__(self, address: str, gcs: Any, node_ids: set[str]) -> dict[str, Any]:
        self.gcs.events.append(("analyse", sorted(node_ids)))
        if self.fails:
            raise RuntimeError("dashboard down")
        return {node_id: (JobImpact("01000000", tasks_running=1),) for node_id in node_ids}


def run(gcs: FakeGcs, *notices: dict[str, Any], fails: bool = False) -> dict[str, Any]:
    response = respond(
        parse_request_of(*notices),
        "10.0.1.10:6379",
        gcs,
        time.perf_counter(),
        FakeAnalysis(gcs, fails),
    )
    return response.to_json()


def parse_request_of(*notices: dict[str, Any]) -> RespondRequest:
    return parse_request(json.dumps(request(*notices)))


def drained(gcs: FakeGcs) -> list[str]:
    return [detail[0] for kind, detail in gcs.events if kind == "drain"]


def test_every_drain_is_issued_before_any_impact_is_analysed() -> None:
    gcs = FakeGcs()

    document = run(gcs, notice(X86), notice(ARM))

    assert [kind for kind, _ in gcs.events] == ["drain", "drain", "analyse"]
    assert [r["outcome"] for r in document["results"]] == ["drained", "drained"]
    assert [len(r["impacted_jobs"]) for r in document["results"]] == [1, 1]
    assert 0 <= document["timings"]["drain_s"] <= document["timings"]["total_s"]


def test_the_command_lowers_its_priority_only_once_its_drains_are_out() -> None:
    gcs = FakeGcs()

    respond(
        parse_request_of(notice(X86), notice(ARM)),
        "10.0.1.10:6379",
        gcs,
        time.perf_counter(),
        FakeAnalysis(gcs),
        before_analysis=lambda: gcs.events.append(("lower priority", None)),
    )

    assert [kind for kind, _ in gcs.events] == ["drain", "drain", "lower priority", "analyse"]


@pytest.mark.parametrize("action", ["drain", "analyse"])
def test_head_node_is_never_drained_nor_analysed(action: str) -> None:
    gcs = FakeGcs()

    (result,) = run(gcs, notice(HEAD, action=action))["results"]

    assert result["outcome"] == "head-node"
    assert result["message"] == "refused: this is the head node; it is never drained"
    assert gcs.events == []


def test_node_already_draining_is_not_drained_again_and_keeps_its_deadline() -> None:
    gcs = FakeGcs(draining={NODE_IDS[X86]: 1_795_321_767_000})

    (result,) = run(gcs, notice(X86))["results"]

    assert result["outcome"] == "already-draining"
    assert result["drain_deadline"] == "2026-11-22T04:29:27Z"
    assert result["drain_issued_at"] is None
    assert drained(gcs) == []


def test_same_node_twice_in_one_request_is_drained_once() -> None:
    gcs = FakeGcs()

    results = run(gcs, notice(X86), notice(X86, kind="rebalance-recommendation"))["results"]

    assert [r["outcome"] for r in results] == ["drained", "already-draining"]
    assert results[0]["drain_deadline"] == results[1]["drain_deadline"]
    assert drained(gcs) == [NODE_IDS[X86]]


def test_deadline_already_past_is_given_to_ray_as_now() -> None:
    gcs = FakeGcs()
    past = datetime.now(UTC) - timedelta(minutes=5)

    (result,) = run(gcs, notice(X86, deadline=past))["results"]

    ((_, (_, _, deadline_ms)),) = [event for event in gcs.events if event[0] == "drain"]
    assert abs(deadline_ms / 1000 - time.time()) < 5
    assert "had passed, so Ray was given now" in result["message"]
    given = datetime.fromisoformat(result["drain_deadline"])
    assert abs((given - datetime.now(UTC)).total_seconds()) < 5


def test_drain_reason_names_the_notice_so_ray_records_why_the_node_died() -> None:
    gcs = FakeGcs()

    run(gcs, notice(X86))

    ((_, (_, reason, _)),) = [event for event in gcs.events if event[0] == "drain"]
    assert reason == f"spot-responder: spot-interruption notice for {X86} (request req-test)"


def test_rejected_drain_is_reported_with_the_reason_of_the_gcs() -> None:
    gcs = FakeGcs(rejection="node is busy with something precious")

    (result,) = run(gcs, notice(X86))["results"]

    assert result["outcome"] == "drain-rejected"
    assert result["message"] == "drain rejected by GCS: node is busy with something precious"
    assert result["drain_issued_at"] is None


def test_failed_analysis_keeps_the_drain_and_says_the_impact_is_unknown() -> None:
    gcs = FakeGcs()

    (result,) = run(gcs, notice(X86), fails=True)["results"]

    assert result["outcome"] == "drained"
    assert result["message"].endswith("; impact unknown: dashboard down")
    assert result["impacted_jobs"] == []


def test_analyse_only_notice_reports_the_impact_without_draining() -> None:
    gcs = FakeGcs()

    (result,) = run(gcs, notice(ARM, action="analyse"))["results"]

    assert result["outcome"] == "analysed"
    assert drained(gcs) == []
    assert result["impacted_jobs"] == [JobImpact("01000000", tasks_running=1).to_json()]
