"""One Ray job in its own driver process, with work on a node that is about to be preempted.

Run as `python -m tests.scenarios.job '<spec JSON>'`. The driver connects to the cluster (to
the doomed node's own raylet when the spec says the driver runs there), puts each item of the
spec on the doomed node, prints `{"ready": ..., "job_id": ...}` once all of it is in place,
waits for a line on stdin (sent after the node was killed and Ray recorded its death), and
prints what became of each item: `{"job_id": ..., "items": [{"kind", "ok", "error"}]}`.

Items (`kind`):
- `task` (`max_retries`: 0, 1 or null for Ray's default): running on the node at the kill;
- `actor` (`max_restarts`: 0, 1, -1): living on the node; it must answer after the kill;
- `put`: a `ray.put` object made by a (restartable) actor on the node: owner and only copy there;
- `return` (`max_retries`): a finished task's return, its only copy on the node (not fetched);
- `owned-object`: an object stored on the spare node, owned by an actor on the doomed node;
- `owned-actor`: an actor on the spare node, created (owned) by an actor on the doomed node;
- `pg`: a placement group whose one bundle is on the node, with a task (default retries) in it;
- `serve`: a Ray Serve application whose one replica lives on the node; it must answer after
  the kill (Serve starts a replica elsewhere once the node drains).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from tests.scenarios.cluster import INSTANCE_ID_LABEL, SPOT
from tests.scenarios.workload import Survivor, hold, near

#: Big enough to live in the object store, not inlined in the owner's memory.
OBJECT_BYTES = 300_000
COLLECT_S = 75.0
#: Worker processes start slowly on a machine shared with other people's clusters.
READY_S = 200.0


class Keeper:
    """An actor on the doomed node that owns what it makes."""

    def put(self) -> list[Any]:
        import ray

        self.kept = ray.put(b"p" * OBJECT_BYTES)
        return [self.kept]  # in a list: the driver borrows it, the actor stays the owner

    def stored_on(self, node_id: str) -> list[Any]:
        import ray

        ref = ray.remote(make_bytes).options(scheduling_strategy=pinned(node_id)).remote()
        ray.wait([ref], fetch_local=False)
        self.kept = ref
        return [ref]

    def child_on(self, node_id: str) -> list[Any]:
        import ray

        self.child = (
            ray.remote(Survivor)
            .options(num_cpus=0, max_restarts=-1, scheduling_strategy=pinned(node_id))
            .remote()
        )
        ray.get(self.child.node.remote())
        return [self.child]

    def ready(self) -> bool:
        return True


def make_bytes() -> bytes:
    return b"r" * OBJECT_BYTES


def pinned(node_id: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id, soft=False)


def place(item: dict[str, Any], spec: dict[str, Any], gate: Any, index: int) -> Any:
    """Put one item on the doomed node; return what to collect later."""
    import ray

    node = spec["node_id"]
    kind = item["kind"]
    name = f"{spec['round']}-{spec['job']}-{index}-{kind}"
    on_node = {"num_cpus": 0, "resources": {SPOT: 1}, "scheduling_strategy": near(node)}
    retries = {} if item.get("max_retries") is None else {"max_retries": item["max_retries"]}
    if kind == "task":
        return ray.remote(hold).options(name=name, **on_node, **retries).remote(gate, name)
    if kind == "return":
        ref = ray.remote(make_bytes).options(name=name, **on_node, **retries).remote()
        ray.wait([ref], fetch_local=False)
        return ref
    if kind == "actor":
        actor = (
            ray.remote(Survivor)
            .options(
                num_cpus=0,
                resources={SPOT: 0.01},
                max_restarts=item["max_restarts"],
                scheduling_strategy=near(node),
            )
            .remote()
        )
        ray.get(actor.node.remote())
        return actor
    if kind == "pg":
        return place_group(spec, gate, name)
    if kind == "serve":
        return place_replica(spec, name)
    keeper = (
        ray.remote(Keeper)
        .options(
            num_cpus=0, resources={SPOT: 0.01}, max_restarts=-1, scheduling_strategy=near(node)
        )
        .remote()
    )
    made = {
        "put": lambda: keeper.put.remote(),
        "owned-object": lambda: keeper.stored_on.remote(spec["spare_node_id"]),
        "owned-actor": lambda: keeper.child_on.remote(spec["spare_node_id"]),
    }[kind]()
    (thing,) = ray.get(made)
    return (keeper, thing)


def place_group(spec: dict[str, Any], gate: Any, name: str) -> Any:
    """A one-bundle placement group on the doomed node, and a task in it that runs until the
    gate opens. The bundle may go to the doomed or the spare node only (a label selector on
    the instance id), where Ray picks: made again until it is on the doomed node; after the
    node's death Ray can move it to the spare."""
    import ray
    from ray.util.placement_group import (
        placement_group,
        placement_group_table,
        remove_placement_group,
    )
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    allowed = {INSTANCE_ID_LABEL: f"in({spec['instance_id']},{spec['spare_instance_id']})"}
    for _ in range(30):
        group = placement_group([{SPOT: 1}], strategy="PACK", bundle_label_selector=[allowed])
        ray.get(group.ready(), timeout=60)
        if placement_group_table(group)["bundles_to_node_id"][0] == spec["node_id"]:
            task = (
                ray.remote(hold)
                .options(
                    name=name,
                    num_cpus=0,
                    resources={SPOT: 1},
                    scheduling_strategy=PlacementGroupSchedulingStrategy(group, 0),
                )
                .remote(gate, name)
            )
            return (group, task)
        remove_placement_group(group)
    raise RuntimeError("the placement group never landed on the doomed node")


class Echo:
    """A Serve deployment that says where its replica lives."""

    def __call__(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())


def place_replica(spec: dict[str, Any], name: str) -> Any:
    """A Serve application with one replica on the doomed node, which may also live on the
    spare (a label selector on the instance id): deployed again until Serve put it on the
    doomed node. Its handle."""
    from ray import serve

    serve.start(proxy_location="Disabled")
    allowed = {INSTANCE_ID_LABEL: f"in({spec['instance_id']},{spec['spare_instance_id']})"}
    deployment = serve.deployment(
        Echo,
        name="echo",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0, "resources": {SPOT: 0.01}, "label_selector": allowed},
        graceful_shutdown_timeout_s=2,
    )
    for _ in range(20):
        handle = serve.run(deployment.bind(), name=name, route_prefix=None)
        if handle.remote().result(timeout_s=60) == spec["node_id"]:
            return handle
        serve.delete(name)
    raise RuntimeError("the Serve replica never landed on the doomed node")


def running_tasks(items: list[dict[str, Any]]) -> int:
    return sum(item["kind"] in {"task", "pg"} for item in items)


def collect(item: dict[str, Any], placed: Any, deadline: float) -> dict[str, Any]:
    import ray

    kind = item["kind"]
    try:
        if kind in {"task", "return"}:
            ray.get(placed, timeout=max(1.0, deadline - time.monotonic()))
        elif kind == "pg":
            ray.get(placed[1], timeout=max(1.0, deadline - time.monotonic()))
        elif kind == "actor":
            answer(placed, deadline)
        elif kind == "owned-actor":
            answer(placed[1], deadline)
        elif kind == "serve":
            placed.remote().result(timeout_s=max(1.0, deadline - time.monotonic()))
        else:
            ray.get(placed[1], timeout=max(1.0, deadline - time.monotonic()))
    except Exception as exc:  # what Ray raises for what is lost
        return {"kind": kind, "ok": False, "error": type(exc).__name__}
    return {"kind": kind, "ok": True, "error": ""}


def answer(actor: Any, deadline: float) -> None:
    """A call that comes back; the actor may still be restarting (retried until the deadline)."""
    import ray
    from ray._private.state import actors

    while True:
        try:
            ray.get(actor.node.remote(), timeout=10)
            return
        except ray.exceptions.GetTimeoutError:
            if time.monotonic() > deadline:  # slow on a busy machine: ask again
                raise
        except ray.exceptions.RayActorError:
            dead = actors(actor._actor_id.hex()).get("State") == "DEAD"
            if dead or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main(argv: list[str]) -> int:
    import ray

    spec = json.loads(argv[0])
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
    if spec.get("driver_temp_dir"):
        options["_temp_dir"] = spec["driver_temp_dir"]
    ray.init(address=spec["address"], **options)
    gate = ray.get_actor(spec["gate"], namespace=spec["namespace"])
    placed = [place(item, spec, gate, index) for index, item in enumerate(spec["items"])]
    expected = running_tasks(spec["items"])
    deadline = time.monotonic() + READY_S
    while ray.get(gate.count_prefix.remote(f"{spec['round']}-{spec['job']}-")) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError("the job's tasks never all started")
        time.sleep(0.2)
    context = ray.get_runtime_context()
    print(
        json.dumps(
            {"ready": True, "job_id": context.get_job_id(), "driver_node_id": context.get_node_id()}
        ),
        flush=True,
    )
    sys.stdin.readline()  # the node is gone
    deadline = time.monotonic() + COLLECT_S
    items = [
        collect(item, thing, deadline) for item, thing in zip(spec["items"], placed, strict=True)
    ]
    print(json.dumps({"job_id": context.get_job_id(), "items": items}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
