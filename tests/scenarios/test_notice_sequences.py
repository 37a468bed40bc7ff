"""The sequences of notices a spot worker really sees, on a real local Ray cluster, judged by
Ray's own books: how the GCS records the node's death, and what became of the work on it.

One cluster for the module; two rounds of four doomed workers and one spare. In each round
every doomed worker runs the same work of this test's job (tasks with max_retries 0, 1 and
Ray's default, actors with max_restarts 0, 1 and -1), gets its sequence of notices answered
by `python -m ray_hooks respond` (as the SSM document runs it), and is killed the way EC2
takes a spot instance (SIGKILL of its raylet and workers) at its termination time. Time is
scaled: the warning comes WINDOW_S before the termination, the deadline is MARGIN_S before it.

Ray books a death as AUTOSCALER_DRAIN_PREEMPTED (and then retries tasks and restarts actors
free of charge) only when the node was draining with reason PREEMPTION and a deadline that
had passed when it died (GcsNodeManager::InferDeathInfo); otherwise UNEXPECTED_TERMINATION.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from tests.ray_hooks_support import notice
from tests.scenarios.cluster import (
    Death,
    PreemptibleCluster,
    Worker,
    death_of,
    draining_deadline_ms,
)
from tests.scenarios.responder import (
    MARGIN_S,
    Background,
    at,
    idle_drain,
    respond,
    results_by_instance,
    warning,
)
from tests.scenarios.workload import (
    DEFAULT,
    ActorOutcome,
    Placed,
    TaskOutcome,
    actor_outcomes,
    gate_on_head,
    place,
    task_outcomes,
    wait_started,
)

pytestmark = pytest.mark.ray

#: Seconds from the spot warning to the termination (EC2: 120 s).
WINDOW_S = 14.0
#: How late the late warning is sent: its deadline has passed by then.
LATE_BY_S = 2.0

PREEMPTED = "AUTOSCALER_DRAIN_PREEMPTED"
UNEXPECTED = "UNEXPECTED_TERMINATION"
IDLE = "AUTOSCALER_DRAIN_IDLE"


@dataclass
class Case:
    """One doomed worker and the notices it gets; what Ray then did."""

    name: str
    #: Notices answered before the warning (built when they are sent).
    before: Callable[[Worker], list[dict[str, Any]]] = lambda worker: []
    warned: bool = True
    late: bool = False
    with_work: bool = True
    #: Only the work that keeps the node busy (one task), for cases judged by the death alone.
    light: bool = False
    idle_drained: bool = False
    killed_before_warning: bool = False
    # ---- observed
    worker: Worker | None = None
    placed: Placed | None = None
    before_results: list[dict[str, Any]] = field(default_factory=list)
    warning_result: dict[str, Any] | None = None
    idle_drain: tuple[bool, str] | None = None
    held_deadline_ms: int | None = None
    termination_s: float = 0.0
    death: Death | None = None
    tasks: dict[int | None, TaskOutcome] = field(default_factory=dict)
    actors: dict[int, ActorOutcome] = field(default_factory=dict)


def health(worker: Worker) -> list[dict[str, Any]]:
    """An AWS Health scheduled retirement: days ahead."""
    days = at(time.time()) + timedelta(days=3)
    return [notice(worker.instance_id, kind="scheduled-change", deadline=days)]


def rebalance_drain(worker: Worker) -> list[dict[str, Any]]:
    """A rebalance recommendation with REBALANCE_ACTION=drain: the Lambda gives no deadline."""
    drain = notice(worker.instance_id, kind="rebalance-recommendation")
    drain["drain_deadline"] = None
    return [drain]


def shutting_down(worker: Worker) -> list[dict[str, Any]]:
    """The state change `shutting-down` seen before any warning: drained at once (deadline now)."""
    return [notice(worker.instance_id, kind="state-change", deadline=at(time.time()))]


ROUNDS: tuple[tuple[Case, ...], ...] = (
    (
        Case("fresh warning"),
        Case("health then warning", before=health, light=True),
        Case("rebalance-drain then warning", before=rebalance_drain, light=True),
        Case("shutting-down then warning", before=shutting_down, light=True),
    ),
    (
        Case("late warning", late=True, light=True),
        Case("ray alone", warned=False),
        Case("idle-drained then warning", with_work=False, idle_drained=True),
        Case("terminated then warning", killed_before_warning=True),
    ),
)
CASES = {case.name: case for round_ in ROUNDS for case in round_}


@pytest.fixture(scope="module")
def played() -> Iterator[dict[str, Case]]:
    """Both rounds played on one cluster; every case with what Ray did."""
    import ray

    with PreemptibleCluster() as cluster:
        spare = cluster.add_worker()
        for number, cases in enumerate(ROUNDS):
            for case in cases:
                case.worker = cluster.add_worker()
            if number == 0:
                ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
            cluster.wait_for_workers()
            play_round(cluster, cases, f"round-{number}")
        assert spare.instance_id in cluster.workers  # the spare lived through both rounds
        yield CASES


def play_round(cluster: PreemptibleCluster, cases: tuple[Case, ...], label: str) -> None:
    import ray

    gcs = ray._private.worker.global_worker.gcs_client
    gate = gate_on_head(cluster.head_node_id)
    # GIVEN the work of this job running on each doomed worker
    place_work(gate, cases)
    # AND what happened to each worker before its warning
    before_the_warning(cluster, gcs, cases, label)
    # WHEN the spot warnings come WINDOW_S before the termination (the late one after its
    # deadline), and each worker is killed at its termination time
    termination_s = time.time() + WINDOW_S
    warn(cluster, gcs, cases, label, termination_s)
    kill_at(cluster, cases, termination_s)
    # THEN: what Ray recorded, and what became of the work
    for case in cases:
        case.death = case.death or death_of(worker_of(case).node_id)
    ray.get(gate.open.remote())
    for case in cases:
        if case.placed is not None:
            case.tasks = task_outcomes(cluster.address, case.placed.tasks)
            case.actors = actor_outcomes(cluster.address, case.placed.actors)


def worker_of(case: Case) -> Worker:
    assert case.worker is not None
    return case.worker


def place_work(gate: Any, cases: tuple[Case, ...]) -> None:
    for case in cases:
        if not case.with_work:
            continue
        label = case.name.replace(" ", "-")
        node_id = worker_of(case).node_id
        if case.light:
            case.placed = place(gate, node_id, label, (DEFAULT,), ())
        else:
            case.placed = place(gate, node_id, label)
    wait_started(gate, sum(len(case.placed.tasks) for case in cases if case.placed))


def before_the_warning(
    cluster: PreemptibleCluster, gcs: Any, cases: tuple[Case, ...], label: str
) -> None:
    for case in cases:
        worker = worker_of(case)
        if case.idle_drained:
            case.idle_drain = idle_drain(gcs, worker.node_id)
        if case.killed_before_warning:
            case.termination_s = time.time()
            cluster.kill(worker)
            case.death = death_of(worker.node_id)  # the `terminated` state change comes later
    before = [item for case in cases for item in case.before(worker_of(case))]
    if not before:
        return
    answered = results_by_instance(respond(cluster.address, *before, request_id=label + "-a"))
    for case in cases:
        if worker_of(case).instance_id in answered:
            case.before_results.append(answered[worker_of(case).instance_id])


def warn(
    cluster: PreemptibleCluster,
    gcs: Any,
    cases: tuple[Case, ...],
    label: str,
    termination_s: float,
) -> None:
    """Answer the warnings (the late one after its deadline passed); read Ray's drains."""

    def answer(group: list[Case], suffix: str) -> Background:
        return Background(
            lambda: (
                respond(
                    cluster.address,
                    *(warning(worker_of(case).instance_id, termination_s) for case in group),
                    request_id=f"{label}-{suffix}",
                )
                if group
                else {"results": []}
            )
        )

    on_time = answer([case for case in cases if case.warned and not case.late], "warnings")
    time.sleep(max(0.0, termination_s - MARGIN_S + LATE_BY_S - 4.0 - time.time()))
    late = answer([case for case in cases if case.late], "late")
    answered = results_by_instance(on_time.result())
    answered.update(results_by_instance(late.result()))
    time.sleep(max(0.0, termination_s - 0.5 - time.time()))
    for case in cases:
        case.warning_result = answered.get(worker_of(case).instance_id)
        if not case.killed_before_warning:
            case.held_deadline_ms = draining_deadline_ms(gcs, worker_of(case).node_id)


def kill_at(cluster: PreemptibleCluster, cases: tuple[Case, ...], termination_s: float) -> None:
    """Kill every worker still there at the termination time. A node that is not draining
    goes first and is seen dead before the others go, so that nothing restarts on it (Ray
    places nothing on a draining node)."""
    time.sleep(max(0.0, termination_s - time.time()))
    to_kill = [case for case in cases if not case.killed_before_warning]
    to_kill.sort(key=lambda case: case.held_deadline_ms is not None)
    for case in to_kill:
        worker = worker_of(case)
        case.termination_s = time.time()
        if worker.instance_id in cluster.workers:
            cluster.kill(worker)
        if case.held_deadline_ms is None:
            case.death = death_of(worker.node_id)


# ---------------------------------------------------------------- the node's death


@pytest.mark.parametrize(
    "name",
    [
        "fresh warning",
        "health then warning",
        "rebalance-drain then warning",
        "shutting-down then warning",
        "late warning",
    ],
)
def test_a_warned_node_killed_at_its_termination_is_booked_as_preempted(
    played: dict[str, Case], name: str
) -> None:
    case = played[name]
    assert case.death is not None
    assert case.death.reason == PREEMPTED, (case.death, case.before_results, case.warning_result)


@pytest.mark.parametrize(
    "name",
    [
        "fresh warning",
        "health then warning",
        "rebalance-drain then warning",
        "shutting-down then warning",
        "late warning",
    ],
)
def test_the_deadline_ray_holds_is_set_and_never_after_the_termination(
    played: dict[str, Case], name: str
) -> None:
    case = played[name]
    assert case.held_deadline_ms, f"Ray holds no deadline for {name}: {case.warning_result}"
    assert case.held_deadline_ms <= case.termination_s * 1000, (
        f"Ray's deadline {at(case.held_deadline_ms / 1000)} is after the termination "
        f"{at(case.termination_s)}"
    )


def test_ray_alone_books_the_killed_node_as_an_unexpected_termination(
    played: dict[str, Case],
) -> None:
    case = played["ray alone"]
    assert case.death is not None
    assert case.death.reason == UNEXPECTED, case.death


def test_every_warned_node_is_booked_preempted_where_ray_alone_books_none(
    played: dict[str, Case],
) -> None:
    warned_then_killed = [
        case
        for case in played.values()
        if case.warned and not case.killed_before_warning and case.with_work
    ]
    preempted = [case.name for case in warned_then_killed if case.death.reason == PREEMPTED]
    alone = [case for case in played.values() if not case.warned]
    assert len(preempted) == len(warned_then_killed) == 5, [
        (case.name, case.death) for case in warned_then_killed
    ]
    assert all(case.death.reason != PREEMPTED for case in alone)


def test_a_node_the_autoscaler_idle_drained_then_warned_never_dies_unexpectedly(
    played: dict[str, Case],
) -> None:
    case = played["idle-drained then warning"]
    assert case.idle_drain is not None
    accepted, message = case.idle_drain
    assert accepted, f"the raylet refused the idle drain of an idle node: {message}"
    assert case.death is not None
    # An idle node the autoscaler drained exits by itself at once (AUTOSCALER_DRAIN_IDLE);
    # if it is still there when the warning comes, the warning's drain must book it preempted.
    assert case.death.reason in {IDLE, PREEMPTED}, case.death
    assert case.warning_result is not None
    if case.death.reason == IDLE:
        assert case.warning_result["outcome"] == "node-not-found", case.warning_result


def test_a_warning_after_the_node_is_gone_drains_nothing_else(played: dict[str, Case]) -> None:
    case = played["terminated then warning"]
    assert case.warning_result is not None
    assert case.warning_result["outcome"] == "node-not-found", case.warning_result
    assert case.warning_result["ray_node_id"] is None
    assert case.death is not None
    assert case.death.reason == UNEXPECTED  # killed before any notice: nothing could help


# ---------------------------------------------------------------- what became of the work


def test_after_a_preemption_tasks_with_retries_finish_and_max_retries_zero_is_lost(
    played: dict[str, Case],
) -> None:
    tasks = played["fresh warning"].tasks
    assert not tasks[0].succeeded, tasks[0]
    assert tasks[0].attempts == 1
    for retries in (1, DEFAULT):
        assert tasks[retries].succeeded, (retries, tasks[retries])
        assert tasks[retries].attempts == 2, (retries, tasks[retries])


def test_after_a_preemption_actors_restart_free_of_charge_and_max_restarts_zero_dies(
    played: dict[str, Case],
) -> None:
    actors = played["fresh warning"].actors
    assert actors[0].state == "DEAD", actors[0]
    for restarts in (1, -1):
        actor = actors[restarts]
        assert (actor.state, actor.answers) == ("ALIVE", True), (restarts, actor)
        assert actor.num_restarts >= 1, actor
        # every restart free of charge (a restart may land on a node dying at the same time)
        assert actor.num_restarts_due_to_node_preemption == actor.num_restarts, (restarts, actor)


def test_under_ray_alone_the_restart_is_charged_against_max_restarts(
    played: dict[str, Case],
) -> None:
    actors = played["ray alone"].actors
    assert actors[0].state == "DEAD"
    once = actors[1]
    assert (once.state, once.answers, once.num_restarts) == ("ALIVE", True, 1), once
    assert once.num_restarts_due_to_node_preemption == 0, once  # its one restart is spent
    tasks = played["ray alone"].tasks
    assert not tasks[0].succeeded
    assert tasks[1].succeeded
    assert tasks[DEFAULT].succeeded
