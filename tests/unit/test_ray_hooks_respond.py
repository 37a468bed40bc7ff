"""What `respond` does for each notice, against a fake GCS: drain first, never the head."""

from __future__ import annotations

import json
import threading
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
    """The GcsClient calls ray_hooks makes, recorded; nodes as the GCS reports them.

    Like Ray 2.60's GCS, an accepted drain makes the node draining with the deadline given,
    and a later drain replaces it, deadline and all. `forgetful`: the GCS answers "accepted"
    but nothing drains (what Ray does for an unknown or dead node id)."""

    def __init__(
        self,
        draining: dict[str, int] | None = None,
        rejection: str = "",
        forgetful: bool = False,
        failing: frozenset[str] = frozenset(),
        cloud_instance_ids: dict[str, str] | None = None,
    ) -> None:
        self.cloud_instance_ids = cloud_instance_ids or {}
        self.draining = draining or {}
        self.rejection = rejection
        self.forgetful = forgetful
        self.failing = failing
        self.events: list[tuple[str, Any]] = []

    def get_all_node_info(self, timeout: float | None = None) -> dict[bytes, Any]:
        from ray.core.generated import gcs_pb2

        infos = {}
        for instance_id, node_id in NODE_IDS.items():
            info = gcs_pb2.GcsNodeInfo(
                node_id=bytes.fromhex(node_id),
                node_manager_address="10.0.1.10",
                is_head_node=instance_id == HEAD,
                instance_id=self.cloud_instance_ids.get(node_id, ""),
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
        if node_id in self.failing:
            raise TimeoutError(f"raylet of {node_id[:8]} did not answer")
        if not self.rejection and not self.forgetful:
            self.draining[node_id] = deadline_timestamp_ms
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


def in_seconds(seconds: float) -> datetime:
    """A moment `seconds` from now, in whole seconds (as `notice()` sends it)."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)


def drain_deadlines(gcs: FakeGcs) -> list[int]:
    return [detail[2] for kind, detail in gcs.events if kind == "drain"]


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


def test_node_draining_with_an_earlier_deadline_is_not_drained_again_and_keeps_it() -> None:
    gcs = FakeGcs(draining={NODE_IDS[X86]: 1_795_321_767_000})

    (result,) = run(gcs, notice(X86))["results"]

    assert result["outcome"] == "already-draining"
    assert result["drain_deadline"] == "2026-11-22T04:29:27Z"
    assert result["drain_issued_at"] is None
    assert drained(gcs) == []


def test_node_drained_days_ahead_is_drained_again_with_the_warnings_earlier_deadline() -> None:
    # GIVEN a node drained for an AWS Health retirement three days ahead
    far = datetime.now(UTC) + timedelta(days=3)
    gcs = FakeGcs(draining={NODE_IDS[X86]: int(far.timestamp() * 1000)})
    warning = in_seconds(100)

    # WHEN the spot warning for it arrives
    (result,) = run(gcs, notice(X86, deadline=warning))["results"]

    # THEN Ray is given the warning's deadline, replacing the far one
    assert result["outcome"] == "drained"
    assert drain_deadlines(gcs) == [int(warning.timestamp() * 1000)]
    assert gcs.draining[NODE_IDS[X86]] == int(warning.timestamp() * 1000)
    assert result["message"].startswith("drained again: deadline moved earlier")


def test_node_draining_without_a_deadline_is_drained_again_with_one() -> None:
    # An idle drain by the autoscaler, or any drain with deadline 0: Ray would book the
    # node's death as a crash.
    gcs = FakeGcs(draining={NODE_IDS[X86]: 0})
    warning = in_seconds(100)

    (result,) = run(gcs, notice(X86, deadline=warning))["results"]

    assert result["outcome"] == "drained"
    assert drain_deadlines(gcs) == [int(warning.timestamp() * 1000)]
    assert "Ray held none" in result["message"]


def test_notice_without_a_termination_time_drains_with_now_never_zero() -> None:
    gcs = FakeGcs()

    (result,) = run(gcs, notice(X86, kind="rebalance-recommendation", no_deadline=True))["results"]

    (deadline_ms,) = drain_deadlines(gcs)
    assert deadline_ms != 0
    assert abs(deadline_ms / 1000 - time.time()) < 5
    assert result["outcome"] == "drained"
    assert "no termination time known, so the deadline is now" in result["message"]


def test_several_notices_for_one_node_drain_it_once_with_the_earliest_deadline() -> None:
    gcs = FakeGcs()
    soon = in_seconds(90)
    later = in_seconds(6 * 3600)

    results = run(
        gcs,
        notice(X86, kind="scheduled-change", deadline=later),
        notice(X86, deadline=soon),
    )["results"]

    assert [r["outcome"] for r in results] == ["drained", "drained"]
    assert drain_deadlines(gcs) == [int(soon.timestamp() * 1000)]
    assert results[0]["drain_deadline"] == results[1]["drain_deadline"]


def test_late_notice_still_drains_with_its_real_deadline_already_past() -> None:
    gcs = FakeGcs()
    past = in_seconds(-300)

    (result,) = run(gcs, notice(X86, deadline=past))["results"]

    assert drain_deadlines(gcs) == [int(past.timestamp() * 1000)]
    assert result["outcome"] == "drained"
    assert "late notice" in result["message"]


def test_drain_the_gcs_accepts_but_does_not_hold_is_reported_unconfirmed() -> None:
    gcs = FakeGcs(forgetful=True)

    (result,) = run(gcs, notice(X86))["results"]

    assert result["outcome"] == "drain-unconfirmed"
    assert "the node is not draining" in result["message"]


def test_a_failing_drain_is_that_notices_failure_and_the_others_still_drain() -> None:
    gcs = FakeGcs(failing=frozenset({NODE_IDS[X86]}))

    results = run(gcs, notice(X86), notice(ARM))["results"]

    assert [r["outcome"] for r in results] == ["drain-failed", "drained"]
    assert "did not answer" in results[0]["message"]
    assert NODE_IDS[ARM] in gcs.draining


class HangingGcs(FakeGcs):
    """A Ray whose drain takes no timeout (before 2.57), one raylet never answering."""

    def __init__(self, hanging: str) -> None:
        super().__init__()
        self.hanging = hanging
        self.released = threading.Event()

    def drain_node(self, node_id: str, *args: Any, **kwargs: Any) -> tuple[bool, str]:
        if node_id == self.hanging:
            self.released.wait()
        return super().drain_node(node_id, *args, **kwargs)


def test_a_drain_that_never_answers_fails_alone_and_does_not_hold_the_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray_hooks import drain

    monkeypatch.setattr(drain, "_RPC_TIMEOUT_S", 0.5)
    gcs = HangingGcs(NODE_IDS[X86])
    started = time.monotonic()
    try:
        results = run(gcs, notice(X86), notice(ARM))["results"]
    finally:
        gcs.released.set()

    assert [r["outcome"] for r in results] == ["drain-failed", "drained"]
    assert "no answer within" in results[0]["message"]
    assert time.monotonic() - started < 10


def test_drains_of_one_request_go_out_side_by_side() -> None:
    # GIVEN a GCS whose drain of X86 answers only once the drain of ARM has arrived
    both_sent = threading.Barrier(2, timeout=10)

    class WaitingGcs(FakeGcs):
        def drain_node(self, node_id: str, *args: Any, **kwargs: Any) -> tuple[bool, str]:
            both_sent.wait()
            return super().drain_node(node_id, *args, **kwargs)

    gcs = WaitingGcs()

    # WHEN both are drained in one request THEN neither waits for the other to finish
    results = run(gcs, notice(X86), notice(ARM))["results"]

    assert [r["outcome"] for r in results] == ["drained", "drained"]


def test_node_is_found_by_the_instance_id_ray_recorded_before_its_label() -> None:
    # GIVEN X86's raylet carries ARM's label by mistake, but Ray recorded X86's instance id
    gcs = FakeGcs(cloud_instance_ids={NODE_IDS[ARM]: X86})

    (result,) = run(gcs, notice(X86))["results"]

    assert result["ray_node_id"] == NODE_IDS[ARM]


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
