"""Verdicts checked against what Ray did: the head's judgement of outcomes, the ledger's record."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from types import SimpleNamespace
from typing import Any

from ray_hooks.nodes import RayNode
from ray_hooks.outcomes import _outcome, _World
from spot_responder.adapters.ledger_sqlite import SqliteLedger
from spot_responder.ledger import LedgerEntry, Status, job_key
from spot_responder.reconcile import record_verdict_outcomes

JOB = "01000000"
ACTOR = "7b7c6ff2aa1f4c5c9f7b3a2e01000000"
TASK = "c2668a65bda616c1ffffffffffffffffffffffff01000000"
NODE = RayNode(
    node_id="ab" * 28,
    ip="10.0.1.11",
    instance_id="i-0a1b2c3d4e5f60001",
    node_group="x86_spot_worker",
    market_type="spot",
    is_head=False,
    state="DEAD",
    death_reason="AUTOSCALER_DRAIN_PREEMPTED",
)


def actor_row(state: str, restarts: int, free: int) -> Any:
    from ray.core.generated import gcs_pb2

    return gcs_pb2.ActorTableData(
        actor_id=bytes.fromhex(ACTOR),
        state=gcs_pb2.ActorTableData.ActorState.Value(state),
        num_restarts=restarts,
        num_restarts_due_to_node_preemption=free,
    )


def task_attempt(attempt: int, state: str) -> Any:
    return SimpleNamespace(task_id=TASK, attempt_number=attempt, state=state)


def record(**job: Any) -> dict[str, Any]:
    judged = {"job_id": JOB, "verdict": "will-recover", "tasks": [], "actors": [], **job}
    return {
        "notice_id": "i-0a1b2c3d4e5f60001#spot-interruption",
        "instance_id": "i-0a1b2c3d4e5f60001",
        "ray_node_id": NODE.node_id,
        "jobs": [judged],
    }


def world(actors: Sequence[Any] = (), tasks: Sequence[Any] = (), finished: bool = False) -> _World:
    return _World(
        actors={bytes(a.actor_id).hex(): a for a in actors},
        tasks={TASK: list(tasks)} if tasks else {},
        finished_jobs=frozenset({JOB} if finished else ()),
    )


def test_actor_restarted_for_free_is_a_recovered_job() -> None:
    rec = record(actors=[ACTOR])

    outcome = _outcome(rec, rec["jobs"][0], NODE, world([actor_row("ALIVE", 1, 1)]))

    assert (outcome.outcome, outcome.node_death) == ("recovered", "AUTOSCALER_DRAIN_PREEMPTED")
    assert outcome.details == (f"actor {ACTOR}: ALIVE, 1 restart(s), 1 free",)


def test_named_actor_dead_for_good_is_a_lost_job_unless_its_library_replaces_it() -> None:
    rec = record(actors=[ACTOR], verdict="lost")
    dead = world([actor_row("DEAD", 0, 0)])

    assert _outcome(rec, rec["jobs"][0], NODE, dead).outcome == "lost"
    served = record(actors=[ACTOR], library_actors={ACTOR: "Ray Serve"})
    assert _outcome(served, served["jobs"][0], NODE, dead).outcome == "recovered"


def test_task_retried_and_finished_recovers_and_one_failed_on_its_last_attempt_is_lost() -> None:
    rec = record(tasks=[{"task_id": TASK, "attempt": 0}])

    retried = world(tasks=[task_attempt(0, "FAILED"), task_attempt(1, "FINISHED")])
    failed = world(tasks=[task_attempt(0, "FAILED")])
    running = world(tasks=[task_attempt(0, "FAILED"), task_attempt(1, "RUNNING")])

    assert _outcome(rec, rec["jobs"][0], NODE, retried).outcome == "recovered"
    assert _outcome(rec, rec["jobs"][0], NODE, failed).outcome == "lost"
    assert _outcome(rec, rec["jobs"][0], NODE, running).outcome == "running"
    assert _outcome(rec, rec["jobs"][0], NODE, retried).details == (
        f"task {TASK[:16]}: 1 retry(ies), latest attempt FINISHED",
    )


def test_driver_on_the_node_is_a_lost_job() -> None:
    rec = record(driver_here=True, verdict="lost")

    assert _outcome(rec, rec["jobs"][0], NODE, world()).outcome == "lost"


def test_the_ledger_keeps_each_outcome_next_to_its_verdict(tmp_path: Any) -> None:
    # GIVEN a drained notice whose entry judged two jobs
    with closing(SqliteLedger(tmp_path / "ledger.sqlite3")) as ledger:
        entry = LedgerEntry(
            key="i-0a1b2c3d4e5f60001#spot-interruption",
            instance_id="i-0a1b2c3d4e5f60001",
            kind="spot-interruption",
            status=Status.DRAINED,
            recorded_at="2026-12-01T10:00:00Z",
            updated_at="2026-12-01T10:00:01Z",
            cluster="ray-on-aws",
            impacted_jobs=(
                {"job_id": JOB, "verdict": "lost"},
                {"job_id": "02000000", "verdict": "will-recover"},
            ),
        )
        ledger.save(entry)

        # WHEN reconcile reports the outcome of one of them (and of a notice long gone)
        written = record_verdict_outcomes(
            {
                "verdict_outcomes": [
                    {
                        "notice_id": entry.key,
                        "job_id": JOB,
                        "verdict": "lost",
                        "outcome": "lost",
                        "node_death": "AUTOSCALER_DRAIN_PREEMPTED",
                        "details": [f"actor {ACTOR}: DEAD, 0 restart(s), 0 free"],
                    },
                    {"notice_id": "i-0ffffffffffffffff#spot-interruption", "job_id": JOB},
                ]
            },
            ledger,
        )

        # THEN the entry and the job's own view hold verdict and outcome side by side
        assert written == 1
        (hit,) = ledger.job_hits(job_key("ray-on-aws", JOB))
        assert hit.impact["verdict"] == "lost"
        assert hit.impact["outcome"]["outcome"] == "lost"
        assert hit.impact["outcome"]["node_death"] == "AUTOSCALER_DRAIN_PREEMPTED"
        stored = ledger.get(entry.key)
        assert stored is not None
        assert "outcome" not in stored.impacted_jobs[1]
