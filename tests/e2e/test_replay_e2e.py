"""EventBridge events → `spot-responder replay` (the Lambda's handler code) → a real Ray cluster.

Everything is judged by what Ray's own GCS says about its nodes, and by the ledger.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from spot_responder.cli.embedded import EmbeddedRayCluster
from tests.ray_hooks_support import drained_by_ray
from tests.support import (
    ARM_WORKER,
    EVENTS,
    HEAD,
    X86_WORKER,
    load_event,
    spot_responder,
    sqs_event,
)

pytestmark = pytest.mark.ray


@pytest.fixture
def cluster():
    with EmbeddedRayCluster() as fresh:
        yield fresh


@pytest.fixture
def gcs(cluster):
    from ray._raylet import GcsClient

    return GcsClient(address=cluster.gcs_address)


def warning_for(instance_id: str, event_id: str) -> dict:
    event = load_event("spot-interruption-terminate.json")
    event["id"] = event_id
    event["detail"]["instance-id"] = instance_id
    return event


def write(tmp_path: Path, name: str, data: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_make_replay_tells_the_whole_story_on_the_real_autoscaler_the_same_way_twice(tmp_path):
    # GIVEN nothing but the repository: no cluster, no AWS account, no ledger yet, and a
    # machine where Ray never ran (the system temp directory holds no `ray` directory)
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    env = {"RAY_TMPDIR": str(system_tmp), "HOME": str(home)}
    runs = []

    # WHEN the README's first command runs twice, on the default ledger both times
    for _ in range(2):
        started = time.monotonic()
        done = spot_responder("replay", str(EVENTS / "spot-interruption-terminate.json"), env=env)
        runs.append((done, time.monotonic() - started))

    for done, seconds in runs:
        # THEN each run drains the warned node, whose replacement joins before the kill,
        # and the terminated state change releases the request; exit 0, no error line
        out = done.stdout
        assert done.returncode == 0, f"{out}\n{done.stderr}"
        assert "spot-interruption:terminate  drained" in out, out
        assert "duplicate" not in out, out
        assert "replacement requested: x86_spot_worker_2 (spot)" in out, out
        joined = re.search(r"replacement x86_spot_worker_2 node \w+ joined ([0-9.]+) s", out)
        lead = re.search(r"killed ([0-9.]+) s after the replacement joined \(lead time\)", out)
        assert joined, out
        assert lead, out
        assert float(lead.group(1)) > 0
        assert "Ray records it dead, AUTOSCALER_DRAIN_PREEMPTED" in out, out
        assert "reconciled: 1 capacity request(s) released" in out, out
        lines = (out + done.stderr).lower().splitlines()
        assert not [line for line in lines if "error" in line or "traceback" in line], out
        print(f"\nmake replay: {seconds:.1f} s, join {joined.group(1)} s, lead {lead.group(1)} s")
    # AND the two runs played different instances: two entries in one ledger, both drained
    ledger = home / ".spot-responder" / "ledger.sqlite3"
    listed = json.loads(spot_responder("ledger", "list", "--json", "--ledger", str(ledger)).stdout)
    warnings = [e for e in listed if e["kind"] == "spot-interruption"]
    assert [e["status"] for e in warnings] == ["drained", "drained"]
    assert len({e["instance_id"] for e in warnings}) == 2
    # AND nothing was left behind in the system temp directory
    assert not list(system_tmp.iterdir())


def test_mixed_batch_drains_exactly_the_two_warned_workers_and_records_all_four(
    cluster, gcs, tmp_path
):
    # GIVEN one SQS batch: a malformed record, a non-Ray instance, two valid warnings
    batch = sqs_event(
        '{"version": "0", "id": "broken", "source": "aws.ec2", "detail-type": ',
        load_event("spot-interruption-not-ray.json"),
        warning_for(X86_WORKER, "w-1"),
        warning_for(ARM_WORKER, "w-2"),
    )
    ledger = str(tmp_path / "ledger.sqlite3")

    # WHEN it is replayed against the cluster
    started = time.monotonic()
    done = spot_responder(
        "replay",
        "--json",
        "--ray-address",
        cluster.address,
        "--ledger",
        ledger,
        write(tmp_path, "batch.json", batch),
    )
    elapsed = time.monotonic() - started

    # THEN Ray drains exactly the two warned workers, and not the head
    assert drained_by_ray(gcs) == {
        cluster.node_id_for(X86_WORKER),
        cluster.node_id_for(ARM_WORKER),
    }
    # AND every record is answered: the warnings and the malformed one are in the ledger, the
    # instance that is not a Ray node costs no ledger write; the malformed one made the
    # replay exit non-zero
    assert done.returncode == 1
    listed = json.loads(spot_responder("ledger", "list", "--json", "--ledger", ledger).stdout)
    assert sorted(e["status"] for e in listed) == ["drained", "drained", "rejected"]
    assert "i-0fedcba9876543210" not in {e["instance_id"] for e in listed}
    rejected = next(e for e in listed if e["status"] == "rejected")
    assert "\n" not in rejected["reason"]
    assert "not JSON" in rejected["reason"]
    print(f"\nevent → two nodes drained (CLI process included): {elapsed:.2f} s")


def test_same_warning_five_times_is_one_drain_and_one_ledger_entry(cluster, gcs, tmp_path):
    ledger = str(tmp_path / "ledger.sqlite3")
    same = warning_for(X86_WORKER, "same-id")
    files = [write(tmp_path, "a.json", same), write(tmp_path, "b.json", same)]
    files += [
        write(tmp_path, f"{eid}.json", warning_for(X86_WORKER, eid)) for eid in ("x", "y", "z")
    ]

    first = spot_responder(
        "replay", "--json", "--ray-address", cluster.address, "--ledger", ledger, *files[:2]
    )
    second = spot_responder(
        "replay", "--json", "--ray-address", cluster.address, "--ledger", ledger, *files[2:]
    )

    assert first.returncode == second.returncode == 0
    outcomes = json.loads(first.stdout) + json.loads(second.stdout)
    assert sorted(o["action"] for o in outcomes) == ["drained"] + ["duplicate"] * 4
    assert drained_by_ray(gcs) == {cluster.node_id_for(X86_WORKER)}
    (entry,) = json.loads(spot_responder("ledger", "list", "--json", "--ledger", ledger).stdout)
    assert entry["deliveries"] == 5


def test_head_node_warning_is_reported_and_the_head_keeps_running(cluster, gcs, tmp_path):
    done = spot_responder(
        "replay",
        "--ray-address",
        cluster.address,
        "--ledger",
        str(tmp_path / "l.sqlite3"),
        str(EVENTS / "spot-interruption-head-node.json"),
    )

    assert done.returncode == 0
    assert "ALERTED (head)" in done.stdout
    assert drained_by_ray(gcs) == set()
    assert cluster.node_id_for(HEAD)


def test_shutting_down_without_a_warning_drains_at_once_and_jobs_are_listed(cluster, gcs, tmp_path):
    ledger = str(tmp_path / "ledger.sqlite3")

    done = spot_responder(
        "replay",
        "--ray-address",
        cluster.address,
        "--ledger",
        ledger,
        str(EVENTS / "state-change-shutting-down.json"),
    )

    assert done.returncode == 0, done.stderr
    assert drained_by_ray(gcs) == {cluster.node_id_for(X86_WORKER)}
    shown = json.loads(spot_responder("ledger", "show", X86_WORKER, "--ledger", ledger).stdout)
    assert shown[0]["status"] == "drained"
