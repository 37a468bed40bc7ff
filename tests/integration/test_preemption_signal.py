"""`ray_hooks.preemption` inside real Ray tasks and actors: the node's deadline, seen in time.

One cluster for the module (a head with no CPUs, two labelled workers). Actors on one
worker watch their node; the warning for it is answered by `python -m ray_hooks respond`,
and what the actors saw - and how many of them asked the GCS - is read back from them. The
watchers poll the GCS only every 30 s here: what tells them in time is the drain's hint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.ray_hooks_support import notice, request, run_ray_hooks

pytestmark = pytest.mark.ray

LABEL = "spot-responder/instance-id"
WARNED = "i-0a1b2c3d4e5f60081"
SPARED = "i-0a1b2c3d4e5f60082"
WATCHERS = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import ray
    from ray.cluster_utils import Cluster

    state_dir = str(tmp_path_factory.mktemp("preemption"))
    env = {"RAY_HOOKS_PREEMPTION_DIR": state_dir, "RAY_HOOKS_PREEMPTION_POLL_S": "30"}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for instance_id in (WARNED, SPARED):
            cluster.add_node(num_cpus=2, labels={LABEL: instance_id})
        cluster.wait_for_nodes()
        ray.init(
            address=cluster.address,
            log_to_driver=False,
            logging_level="WARNING",
            runtime_env={"env_vars": env},
        )
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


class Watcher:
    """Watches its node from the moment it starts; remembers when it was told to go."""

    def __init__(self) -> None:
        from ray_hooks import preemption

        self.told: list[tuple[float, Any]] = []
        self._watch = preemption.on_notice(lambda d: self.told.append((time.time(), d.at)))
        self._watch.__enter__()
        preemption.deadline()

    def seen(self) -> dict[str, Any]:
        from ray_hooks import preemption

        notice = preemption.deadline()
        watch = preemption._watch()
        return {
            "deadline": None if notice is None else (notice.at and notice.at.isoformat()),
            "told": [(at, d and d.isoformat()) for at, d in self.told],
            "leads": bool(watch and watch.leads),
            "pid": __import__("os").getpid(),
        }


class AsyncWaiter:
    async def wait(self) -> str | None:
        from ray_hooks import preemption

        notice = await preemption.wait()
        return None if notice.at is None else notice.at.isoformat()


def on(instance_id: str, cls: type, **options: Any) -> Any:
    import ray

    return ray.remote(num_cpus=0.1, **options)(cls).options(label_selector={LABEL: instance_id})


def test_every_task_on_a_drained_node_learns_its_deadline_and_one_process_asks_the_gcs(
    cluster: Any,
) -> None:
    import ray

    # GIVEN actors watching on the worker that will be warned, and one on the other worker
    watchers = [on(WARNED, Watcher).remote() for _ in range(WATCHERS)]
    spared = on(SPARED, Watcher).remote()
    waiter = on(WARNED, AsyncWaiter).remote()
    before = ray.get([w.seen.remote() for w in [*watchers, spared]], timeout=120)
    assert all(seen["deadline"] is None and not seen["told"] for seen in before)
    waiting = waiter.wait.remote()

    # WHEN the warning for that worker is answered
    deadline = (datetime.now(UTC) + timedelta(seconds=60)).replace(microsecond=0)
    answered = run_ray_hooks(
        "respond",
        "--address",
        cluster.address,
        stdin=json.dumps(request(notice(WARNED, deadline=deadline))),
    )
    assert answered.code == 0, answered.stderr
    drained_at = time.time()

    # THEN every watcher on that node is told, once, with Ray's deadline
    time.sleep(3)
    after = ray.get([w.seen.remote() for w in watchers], timeout=60)
    for seen in after:
        assert seen["deadline"] == deadline.isoformat()
        ((told_at, told_deadline),) = seen["told"]
        assert told_deadline == deadline.isoformat()
        assert told_at - drained_at < 3
    assert ray.get(waiting, timeout=30) == deadline.isoformat()
    # AND only one process on the node asks the GCS; the other node is not told anything
    leaders = {seen["pid"] for seen in after if seen["leads"]}
    assert len(leaders) <= 1
    assert len({seen["pid"] for seen in after}) > 1
    spared_now = ray.get(spared.seen.remote(), timeout=60)
    assert (spared_now["deadline"], spared_now["told"]) == (None, [])
