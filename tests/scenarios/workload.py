"""Work of this process's Ray job placed on one worker, and what became of it after the kill.

Tasks hold on until a gate (an actor on the head, which never dies) opens, so they are
still running when the node is killed and their retries end at once; actors live on the
node with a given `max_restarts`. Everything asks for the `spot` resource, so a retry or
restart goes to another worker, never to the head.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tests.scenarios.cluster import SPOT

#: Ray's default: the task is submitted without max_retries.
DEFAULT = None


class Gate:
    """Opened once the node is gone; tasks wait for it."""

    def __init__(self) -> None:
        self._open = False
        self._opened: set[str] = set()
        self._prefixes: set[str] = set()
        self._started: list[str] = []  # one entry per attempt that started

    def open(self, name: str | None = None) -> None:
        """Open the gate for the tasks named `name`, or for every task."""
        if name is None:
            self._open = True
        else:
            self._opened.add(name)

    def is_open(self, name: str) -> bool:
        return (
            self._open
            or name in self._opened
            or any(name.startswith(prefix) for prefix in self._prefixes)
        )

    def started(self, name: str) -> None:
        self._started.append(name)

    def count(self) -> int:
        return len(self._started)

    def count_of(self, name: str) -> int:
        return self._started.count(name)

    def count_prefix(self, prefix: str) -> int:
        return len({name for name in self._started if name.startswith(prefix)})

    def open_prefix(self, prefix: str) -> None:
        self._prefixes.add(prefix)


def hold(gate: Any, name: str) -> str:
    """A task: say it started, run until the gate opens, return the node it finished on."""
    import ray

    ray.get(gate.started.remote(name))
    while not ray.get(gate.is_open.remote(name)):
        time.sleep(0.3)
    return str(ray.get_runtime_context().get_node_id())


class Survivor:
    """An actor that says where it lives."""

    def node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())


def gate_on_head(head_node_id: str) -> Any:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0)(Gate)
    return remote.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(head_node_id, soft=False)
    ).remote()


def near(node_id: str) -> Any:
    """Start on the node; a retry or restart goes anywhere else (soft affinity)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id, soft=True)


@dataclass
class Placed:
    """Tasks and actors of one node, by the max_retries / max_restarts they were given."""

    node_id: str
    tasks: dict[int | None, Any] = field(default_factory=dict)
    task_ids: dict[int | None, str] = field(default_factory=dict)
    actors: dict[int, Any] = field(default_factory=dict)


def place(
    gate: Any,
    node_id: str,
    label: str,
    task_retries: tuple[int | None, ...] = (0, 1, DEFAULT),
    actor_restarts: tuple[int, ...] = (0, 1, -1),
) -> Placed:
    """One task per max_retries, one actor per max_restarts, all started on `node_id`."""
    import ray

    placed = Placed(node_id)
    task = ray.remote(hold)
    for retries in task_retries:
        options: dict[str, Any] = {
            "num_cpus": 0,
            "resources": {SPOT: 1},
            "scheduling_strategy": near(node_id),
            "name": f"hold-{label}-r{retries}",
        }
        if retries is not None:
            options["max_retries"] = retries
        ref = task.options(**options).remote(gate, options["name"])
        placed.tasks[retries] = ref
        placed.task_ids[retries] = ref.task_id().hex()
    actor = ray.remote(Survivor)
    for restarts in actor_restarts:
        placed.actors[restarts] = actor.options(
            num_cpus=0,
            resources={SPOT: 0.01},
            max_restarts=restarts,
            scheduling_strategy=near(node_id),
            name=f"survivor-{label}-m{restarts}",
        ).remote()
    for restarts, handle in placed.actors.items():
        where = ray.get(handle.node.remote(), timeout=60)
        assert where == node_id, f"actor max_restarts={restarts} started on {where}"
    return placed


def wait_started(gate: Any, count: int, timeout_s: float = 60) -> None:
    """Until `count` tasks run, and a second more for Ray's task events to reach the GCS."""
    import ray

    deadline = time.monotonic() + timeout_s
    while ray.get(gate.count.remote()) < count:
        assert time.monotonic() < deadline, f"{count} tasks never all started"
        time.sleep(0.2)
    time.sleep(1.5)


@dataclass(frozen=True)
class TaskOutcome:
    succeeded: bool
    error: str
    attempts: int  # attempt numbers Ray recorded for the task (1 = never retried)


@dataclass(frozen=True)
class ActorOutcome:
    state: str  # ALIVE or DEAD, as the GCS actor table says
    num_restarts: int
    num_restarts_due_to_node_preemption: int
    answers: bool  # a call after the kill came back


def task_outcomes(
    address: str, refs: dict[Any, Any], timeout_s: float = 90
) -> dict[Any, TaskOutcome]:
    """What became of each task (by key): its result or error, and the attempts Ray recorded."""
    import ray
    from ray.util.state import list_tasks

    ended: dict[Any, tuple[bool, str]] = {}
    deadline = time.monotonic() + timeout_s
    for key, ref in refs.items():
        try:
            ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
            ended[key] = (True, "")
        except ray.exceptions.GetTimeoutError:
            ended[key] = (False, "timed out")
        except Exception as exc:  # what Ray raises for a task lost with its node
            ended[key] = (False, type(exc).__name__)
    job_id = ray.get_runtime_context().get_job_id()
    attempts: dict[str, set[int]] = {}
    for task in list_tasks(
        address=address,
        filters=[("job_id", "=", job_id)],
        limit=10_000,
        raise_on_missing_output=False,
    ):
        attempts.setdefault(task.task_id, set()).add(task.attempt_number)
    return {
        key: TaskOutcome(*ended[key], len(attempts.get(ref.task_id().hex(), set())))
        for key, ref in refs.items()
    }


def actor_outcomes(
    address: str, handles: dict[Any, Any], timeout_s: float = 90
) -> dict[Any, ActorOutcome]:
    """Once the GCS says each actor is ALIVE again or DEAD: its restarts, whether it answers."""
    import ray
    from ray.util.state import list_actors

    wanted = {handle._actor_id.hex(): key for key, handle in handles.items()}
    deadline = time.monotonic() + timeout_s
    while True:
        table = {
            actor.actor_id: actor
            for actor in list_actors(address=address, detail=True, limit=10_000)
            if actor.actor_id in wanted
        }
        settled = all(
            actor.state == "DEAD" or (actor.state == "ALIVE" and actor.num_restarts > 0)
            for actor in table.values()
        )
        if (settled and len(table) == len(wanted)) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    outcomes: dict[Any, ActorOutcome] = {}
    for actor_id, key in wanted.items():
        actor = table[actor_id]
        answers = False
        while actor.state == "ALIVE" and not answers and time.monotonic() < deadline:
            try:
                ray.get(handles[key].node.remote(), timeout=10)
                answers = True
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                time.sleep(0.5)  # the caller may not know of the restart yet, or it is slow
        outcomes[key] = ActorOutcome(
            actor.state,
            int(actor.num_restarts),
            int(actor.num_restarts_due_to_node_preemption),
            answers,
        )
    return outcomes
