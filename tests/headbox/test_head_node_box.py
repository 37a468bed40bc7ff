"""The real head node, in a box: the bundle's own commands start Ray (token auth on), and the
SSM document's own command, run as root the way the SSM Agent runs it, drains a worker.

One box per module (tests/headbox/box.py): a head machine and two worker machines, each
with its own network, /tmp, processes and IMDSv2. Judged by Ray's own state (the GCS's
draining nodes, read as the Ray user), with the response read by the Lambda's own contract
code (spot_responder.contract).

The three proofs that the box can fail run first, against the worker that the real run
then drains: without the document's user switch, with the token out of the Ray user's
reach, and with a worker whose label command is an IMDSv1 call.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from spot_responder.contract import parse_response
from spot_responder.reconcile import reconcile_request
from tests.cfn import resource, sub
from tests.headbox.box import STARTS, BoxError, HeadBox, Machine, head_box, stack_defaults

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None,
        reason="the head-node box needs root, ip netns and nsenter",
    ),
]

X86_SPOT = "x86_spot_worker"
USER_SWITCH = re.compile(r"runuser -u \S+ -- ")


def document_script() -> str:
    """The respond document's runCommand, rendered with the stack's default parameters."""
    (step,) = resource("RespondDocument")["Properties"]["Content"]["mainSteps"]
    values = stack_defaults()
    return "\n".join(
        sub(line, values) if isinstance(line, dict) else line
        for line in step["inputs"]["runCommand"]
    )


def respond_request(worker: Machine) -> str:
    deadline = datetime.now(UTC) + timedelta(seconds=100)
    notice = {
        "notice_id": f"{worker.instance_id}#spot-interruption",
        "instance_id": worker.instance_id,
        "private_ip": worker.ip,
        "kind": "spot-interruption",
        "action": "drain",
        "drain_deadline": deadline.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "replacement": {"mode": "spot-first", "unavailable_pools": []},
    }
    document = {
        "version": 1,
        "operation": "respond",
        "cluster": "headbox",
        "request_id": f"req-box{time.time_ns() % 10**8}",
        "notices": [notice],
    }
    return base64.b64encode(json.dumps(document).encode()).decode()


def draining(box: HeadBox) -> dict[str, int]:
    """The GCS's draining nodes, as Ray itself reports them."""
    result: dict[str, int] = box.ray_state("gcs.get_draining_nodes(timeout=10)")
    return result


def node_of(box: HeadBox, instance_id: str) -> dict[str, Any] | None:
    """The newest Ray node with the instance's label: id, alive, Ray's death message."""
    nodes: list[list[Any]] = box.ray_state(
        "[(bytes(i.node_id).hex(), dict(i.labels), i.state, i.start_time_ms, "
        "i.death_info.reason_message) for i in gcs.get_all_node_info(timeout=10).values()]"
    )
    mine = [node for node in nodes if node[1].get("spot-responder/instance-id") == instance_id]
    if not mine:
        return None
    node_id, _, state, _, death = max(mine, key=lambda node: node[3])
    return {"node_id": node_id, "alive": state == 0, "death": death}


def assert_document_drains(box: HeadBox, script: str, worker: Machine) -> dict[str, Any]:
    """The check of this module: the document's command drains the worker, by Ray's state
    (draining in the GCS, or already gone: an idle drained node exits at once, and Ray
    records the drain's reason, the responder's, as its death message)."""
    request = respond_request(worker)
    done = box.ssm_document(script, "respond", request)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout}\n{done.stderr[-3000:]}"
    answer = json.loads(done.stdout)
    response = parse_response(answer)  # the Lambda's own reading of the answer
    (result,) = response.results.values()
    assert result.outcome == "drained", result.message
    node = node_of(box, worker.instance_id)
    assert node is not None
    assert result.ray_node_id == node["node_id"]
    if node["alive"]:
        assert node["node_id"] in draining(box), "Ray does not list the node as draining"
    else:  # Ray recorded the drain's reason, ours, as the cause of the node's end
        assert response.request_id in node["death"], node["death"]
    answer_copy: dict[str, Any] = answer
    return answer_copy


def assert_untouched(box: HeadBox, worker: Machine, draining_before: dict[str, int]) -> None:
    node = node_of(box, worker.instance_id)
    assert node is not None
    assert node["alive"]
    assert draining(box) == draining_before


@pytest.fixture(scope="module")
def box() -> Iterator[HeadBox]:
    started = time.monotonic()
    with head_box(workers=2) as built:
        worker = built.spare[0]
        done = built.start_worker(worker, X86_SPOT)
        for _ in range(STARTS - 1):  # a busy machine: see box.STARTS
            if done.returncode == 0 and node_of(built, worker.instance_id) is not None:
                break
            done = built.start_worker(worker, X86_SPOT, restart=True)
        if done.returncode != 0 or node_of(built, worker.instance_id) is None:
            raise BoxError(f"the worker did not join: {done.stderr[-3000:]}")
        print(
            f"\nhead-node box up in {time.monotonic() - started:.1f} s "
            f"(setup commands {built.setup_s:.1f} s)"
        )
        yield built


def test_worker_started_by_the_bundle_carries_its_imdsv2_labels(box: HeadBox) -> None:
    worker = box.workers[0]
    nodes: list[list[Any]] = box.ray_state(
        "[dict(i.labels) for i in gcs.get_all_node_info(timeout=10).values() if i.state == 0]"
    )
    labels = next(n for n in nodes if n.get("spot-responder/instance-id") == worker.instance_id)
    assert labels["ray.io/market-type"] == "spot"  # from the IMDS life cycle
    assert labels["ray.io/node-group"] == X86_SPOT
    assert labels["ray.io/availability-zone"] == worker.zone


def test_proof_without_the_user_switch_root_drains_nothing(box: HeadBox) -> None:
    # GIVEN the document's command without `runuser -u <RayUser> --`
    script = document_script()
    without_switch = USER_SWITCH.sub("", script)
    assert without_switch != script
    before = draining(box)

    # WHEN the agent runs it, THEN the box's check fails and Ray drains nothing
    with pytest.raises(AssertionError):
        assert_document_drains(box, without_switch, box.workers[0])
    assert_untouched(box, box.workers[0], before)


def test_proof_with_the_token_out_of_the_ray_users_reach_nothing_is_drained(
    box: HeadBox,
) -> None:
    token = box.user.home / ".ray" / "auth_token"
    before = draining(box)
    owner = token.stat()
    try:
        os.chown(token, 0, 0)
        token.chmod(0o600)
        with pytest.raises(AssertionError):
            assert_document_drains(box, document_script(), box.workers[0])
    finally:
        os.chown(token, owner.st_uid, owner.st_gid)
        token.chmod(owner.st_mode & 0o777)
    assert_untouched(box, box.workers[0], before)


def test_proof_a_worker_labelled_by_an_imdsv1_call_is_not_drained(box: HeadBox) -> None:
    # GIVEN a second worker whose label commands read the IMDS without a session token
    (_, start) = box.config["worker_start_ray_commands"]  # after `ray stop`
    imdsv1 = re.sub(r"TOKEN=\$\(curl [^)]*api/token\)\s*&& ", "", start)
    imdsv1 = imdsv1.replace('-H "X-aws-ec2-metadata-token: $TOKEN" ', "")
    assert "X-aws-ec2-metadata-token" not in imdsv1
    worker = box.spare[1]

    box.start_worker(worker, X86_SPOT, [imdsv1])

    # THEN the check fails for it: the IMDS refuses the calls, the worker has no label
    with pytest.raises(AssertionError):
        assert_document_drains(box, document_script(), worker)
    assert node_of(box, worker.instance_id) is None


def test_document_as_root_drains_the_worker_with_token_auth_on(box: HeadBox) -> None:
    # GIVEN the head and a worker started by the bundle's own commands, token auth on
    assert (
        box.ray_state(
            "gcs.internal_kv_get(b'__autoscaler_v2_enabled', b'__autoscaler', 10) is not None"
        )
        is True
    )
    worker = box.workers[0]

    # WHEN the SSM document's command runs as root, as the agent runs it
    started = time.monotonic()
    answer = assert_document_drains(box, document_script(), worker)

    # THEN the worker is draining in Ray, with the deadline, and a replacement was asked
    print(f"document drained the worker in {time.monotonic() - started:.1f} s")
    (capacity,) = answer["capacity_requests"]
    assert capacity["status"] == "requested", capacity


def test_the_same_box_answers_reconcile(box: HeadBox) -> None:
    request = base64.b64encode(json.dumps(reconcile_request("headbox")).encode()).decode()

    done = box.ssm_document(document_script(), "reconcile", request)

    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)
    assert "error" not in answer
    outstanding = {item["instance_id"] for item in answer["outstanding"]}
    assert box.workers[0].instance_id in outstanding  # what respond asked, still wanted
