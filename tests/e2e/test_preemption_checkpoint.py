"""Long work that saves itself on the notice: with the responder, against Ray alone.

Two runs of tests/preemption_scenario.py on fresh local clusters (notice window scaled to
12 s, tasks three windows long): the worker is killed at its termination time either way.
"""

from __future__ import annotations

import pytest

from tests.preemption_scenario import interrupt

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_work_told_of_the_deadline_saves_itself_in_time_and_resumes_where_it_stopped() -> None:
    # GIVEN an actor whose checkpoint takes 30 % of the window, and two tasks three windows
    # long, on a worker that gets a spot warning and is killed at its termination time

    # WHEN the responder answers the warning
    run = interrupt(responder=True)

    # THEN Ray books the death as a preemption, the actor's checkpoint was done before the
    # kill, and the tasks resumed elsewhere with no step done twice beyond the last saved
    assert run.death_reason == "AUTOSCALER_DRAIN_PREEMPTED"
    assert run.checkpoint_done_s is not None
    assert run.checkpoint_done_s < run.killed_s
    assert run.completed == run.tasks
    assert run.repeated_steps <= run.tasks  # at most the step in flight at the kill, per task


def test_without_the_responder_the_work_is_never_told_and_is_repeated() -> None:
    run = interrupt(responder=False)

    assert run.death_reason == "UNEXPECTED_TERMINATION"
    assert run.checkpoint_done_s is None
    assert run.completed == run.tasks
    assert run.repeated_steps >= 2 * run.tasks  # every step done before the kill, again
