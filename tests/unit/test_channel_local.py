"""The local channel lists the cluster's nodes ahead, while the replay's own code loads."""

from __future__ import annotations

import json
import os
import time

import pytest

from spot_responder.adapters.channel_local import LocalClusterChannel
from spot_responder.adapters.instances_local import RayLabelDirectory
from tests.faults.injection import stand_in_python
from tests.support import X86_WORKER

LISTING = {
    "nodes": [
        {
            "instance_id": X86_WORKER,
            "is_head": False,
            "node_group": "x86_spot_worker",
            "ip": "10.0.2.17",
            "market_type": "spot",
        }
    ]
}


def counting_describe(tmp_path, delay_s: float = 0.0) -> tuple[str, os.PathLike[str]]:
    """A stand-in `python -m ray_hooks describe`: notes each start, then answers LISTING."""
    starts = tmp_path / "starts"
    script = f"echo $$ >> {starts}\nsleep {delay_s}\necho '{json.dumps(LISTING)}'"
    return stand_in_python(tmp_path, "py", script), starts


def test_a_listing_started_early_answers_the_directory_and_runs_once(tmp_path):
    python, starts = counting_describe(tmp_path, delay_s=0.5)
    channel = LocalClusterChannel("127.0.0.1:1", python=python)

    channel.start_describe()
    time.sleep(0.6)  # the replay loads its code meanwhile
    found = RayLabelDirectory(channel, cluster="c").describe([X86_WORKER, "i-0notanode0000000"])

    assert list(found) == [X86_WORKER]
    assert found[X86_WORKER].lifecycle == "spot"
    assert len(starts.read_text().split()) == 1


def test_a_second_listing_is_a_fresh_one(tmp_path):
    python, starts = counting_describe(tmp_path)
    channel = LocalClusterChannel("127.0.0.1:1", python=python)

    channel.start_describe()
    assert channel.describe() == LISTING
    assert channel.describe() == LISTING

    assert len(starts.read_text().split()) == 2


def test_closing_ends_a_listing_nobody_took(tmp_path):
    python, starts = counting_describe(tmp_path, delay_s=30)
    channel = LocalClusterChannel("127.0.0.1:1", python=python)
    channel.start_describe()
    deadline = time.monotonic() + 10
    while not (starts.exists() and starts.read_text().strip()):
        assert time.monotonic() < deadline, "the listing never started"
        time.sleep(0.05)
    (pid,) = [int(p) for p in starts.read_text().split()]

    channel.close()

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
