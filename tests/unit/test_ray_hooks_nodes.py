"""Which Ray node an EC2 instance is: by its label, else by an IP that only it has."""

from __future__ import annotations

from typing import Any

from ray_hooks.nodes import ALIVE, DEAD, DRAINING, RayNode, find_node, node_from_info

X86 = "i-0a1b2c3d4e5f60001"
ARM = "i-0a1b2c3d4e5f60002"
OTHER = "i-0a1b2c3d4e5f60009"


def node(
    node_id: str,
    ip: str,
    instance_id: str | None,
    state: str = ALIVE,
    start_time_ms: int = 1,
    death_message: str = "",
) -> RayNode:
    return RayNode(
        node_id=node_id,
        ip=ip,
        instance_id=instance_id,
        node_group="x86_spot_worker",
        market_type="spot",
        is_head=False,
        state=state,
        start_time_ms=start_time_ms,
        death_message=death_message,
    )


def test_instance_is_found_by_its_label_even_when_other_nodes_share_its_ip() -> None:
    nodes = [node("aa", "10.0.1.11", X86), node("bb", "10.0.1.11", ARM)]

    match = find_node(nodes, ARM, "10.0.1.11")

    assert match.node is not None
    assert (match.node.node_id, match.found_by) == ("bb", "label")


def test_restarted_raylet_on_the_same_instance_is_found_not_its_dead_predecessor() -> None:
    nodes = [
        node("old", "10.0.1.11", X86, state=DEAD, start_time_ms=1),
        node("new", "10.0.1.11", X86, start_time_ms=2),
    ]

    match = find_node(nodes, X86, None)

    assert match.node is not None
    assert match.node.node_id == "new"


def test_unlabelled_node_is_found_by_an_ip_that_only_it_has() -> None:
    nodes = [node("aa", "10.0.1.11", None), node("bb", "10.0.1.12", None)]

    match = find_node(nodes, X86, "10.0.1.12")

    assert match.node is not None
    assert (match.node.node_id, match.found_by) == ("bb", "ip")


def test_ip_that_several_alive_nodes_share_finds_no_node() -> None:
    nodes = [node("aa", "127.0.0.1", None), node("bb", "127.0.0.1", None)]

    match = find_node(nodes, X86, "127.0.0.1")

    assert match.node is None
    assert "shared by 2 alive nodes" in match.explanation


def test_ip_of_a_node_labelled_as_another_instance_finds_no_node() -> None:
    match = find_node([node("aa", "10.0.1.11", ARM)], X86, "10.0.1.11")

    assert match.node is None
    assert f"belongs to {ARM}" in match.explanation


def test_dead_node_is_never_found_and_the_message_says_how_it_died() -> None:
    dead = node("aa", "10.0.1.11", X86, state=DEAD, death_message="Terminated due to preemption")

    match = find_node([dead], X86, "10.0.1.11")

    assert match.node is None
    assert match.explanation.startswith(
        f"no alive Ray node has label spot-responder/instance-id={X86} or IP 10.0.1.11"
    )
    assert "is DEAD: Terminated due to preemption" in match.explanation


def gcs_node_info(node_id: bytes, *, state: str = "ALIVE", snapshot: str = "IDLE") -> Any:
    from ray.core.generated import gcs_pb2

    info = gcs_pb2.GcsNodeInfo(
        node_id=node_id,
        node_manager_address="10.0.1.11",
        is_head_node=False,
        state=gcs_pb2.GcsNodeInfo.GcsNodeState.Value(state),
        start_time_ms=5,
    )
    info.labels.update(
        {
            "spot-responder/instance-id": X86,
            "ray.io/node-group": "x86_spot_worker",
            "ray.io/market-type": "spot",
        }
    )
    info.state_snapshot.state = info.state_snapshot.State.Value(snapshot)
    return info


def test_gcs_node_info_becomes_a_node_with_its_labels() -> None:
    info = gcs_node_info(b"\x01" * 28)

    found = node_from_info(info, {})

    assert found == RayNode(
        node_id="01" * 28,
        ip="10.0.1.11",
        instance_id=X86,
        node_group="x86_spot_worker",
        market_type="spot",
        is_head=False,
        state=ALIVE,
        start_time_ms=5,
    )


def test_node_is_draining_as_soon_as_the_gcs_says_so_before_its_own_snapshot() -> None:
    node_id = b"\x02" * 28

    listed = node_from_info(gcs_node_info(node_id), {node_id.hex(): 1_795_321_767_000})
    reported = node_from_info(gcs_node_info(node_id, snapshot="DRAINING"), {})

    assert (listed.state, reported.state) == (DRAINING, DRAINING)
    assert listed.drain_deadline is not None
    assert listed.drain_deadline.isoformat() == "2026-11-22T04:29:27+00:00"


def test_dead_node_info_is_dead_even_if_it_was_draining() -> None:
    node_id = b"\x03" * 28

    found = node_from_info(gcs_node_info(node_id, state="DEAD"), {node_id.hex(): 0})

    assert found.state == DEAD
