"""A batch through the Lambda's handler code: one request per cluster, every notice recorded."""

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from spot_responder.adapters.ledger_sqlite import SqliteLedger
from spot_responder.handlers.responder import respond
from spot_responder.ledger import Status
from spot_responder.responder import STALE_CLAIM, RecordStatus, Responder
from spot_responder.settings import ReplacementMode, Settings
from tests.support import (
    ARM_WORKER,
    HEAD,
    NOT_RAY,
    REFUSED,
    UNREACHABLE,
    X86_WORKER,
    FakeChannel,
    FakeDirectory,
    load_event,
    ray_instance,
    sqs_event,
)


@pytest.fixture
def ledger(tmp_path):
    store = SqliteLedger(tmp_path / "ledger.sqlite3")
    yield store
    store.close()


@pytest.fixture
def channel():
    return FakeChannel()


@pytest.fixture
def responder(ledger, channel):
    directory = FakeDirectory(
        ray_instance(X86_WORKER),
        ray_instance(ARM_WORKER),
        # a head on spot capacity (against advice): its warnings are real
        replace(ray_instance(HEAD, kind="head"), lifecycle="spot"),
        ray_instance("i-0b0b0b0b0b0b0b0b1", cluster="second-cluster"),
    )
    return Responder(directory=directory, channel=channel, ledger=ledger, settings=Settings())


def warning_for(instance_id, event_id):
    event = load_event("spot-interruption-terminate.json")
    event["id"] = event_id
    event["detail"]["instance-id"] = instance_id
    return event


def statuses(ledger):
    return {e.key: e.status for e in ledger.entries()}


def test_mixed_batch_drains_exactly_the_two_warned_workers_and_records_all_four(
    responder, ledger, channel
):
    # GIVEN one malformed record, one warning for a non-Ray instance, two valid warnings
    event = sqs_event(
        '{"version": "0", "id": "broken", "detail-type": "EC2 Spot Instance Interruption',
        load_event("spot-interruption-not-ray.json"),
        warning_for(X86_WORKER, "e-1"),
        warning_for(ARM_WORKER, "e-2"),
    )

    # WHEN the handler runs
    response, report = respond(event, None, responder, retime=True)

    # THEN exactly the two workers are drained, in one request to their cluster
    assert sorted(channel.drained) == [X86_WORKER, ARM_WORKER]
    assert len(channel.requests) == 1
    # AND the three that concern Ray are in the ledger, the malformed one rejected, not
    # retried; the non-Ray instance's notice is reported as ignored and costs no ledger write
    recorded = statuses(ledger)
    assert sorted(recorded.values()) == sorted([Status.REJECTED, Status.DRAINED, Status.DRAINED])
    (not_ours,) = [n for n in report.notices if not n.stored]
    assert (not_ours.entry.instance_id, not_ours.entry.status) == (NOT_RAY, Status.IGNORED)
    assert response == {"batchItemFailures": []}
    assert list(report.statuses.values()).count(RecordStatus.REJECTED) == 1


def test_same_warning_five_times_drains_once_and_keeps_one_entry(responder, ledger, channel):
    # Same event id twice, then three other event ids, partly in separate batches.
    bodies = [warning_for(X86_WORKER, eid) for eid in ("a", "a", "b", "c", "d")]

    respond(sqs_event(*bodies[:3]), None, responder, retime=True)
    respond(sqs_event(*bodies[3:]), None, responder, retime=True)

    assert channel.drained == [X86_WORKER]
    (entry,) = ledger.entries()
    assert entry.status is Status.DRAINED
    assert entry.deliveries == 5
    assert sorted(entry.event_ids) == ["a", "b", "c", "d"]


def test_a_notice_delivered_hundreds_of_times_keeps_a_bounded_entry(responder, ledger, channel):
    # GIVEN 300 different events for the same instance and kind, in batches of 10
    bodies = [warning_for(X86_WORKER, f"event-{n:03d}") for n in range(300)]

    for start in range(0, len(bodies), 10):
        respond(sqs_event(*bodies[start : start + 10]), None, responder, retime=True)

    # THEN one drain and one entry: every delivery counted, the first and latest 49 ids kept
    assert channel.drained == [X86_WORKER]
    (entry,) = ledger.entries()
    assert entry.deliveries == 300
    assert len(entry.event_ids) == 50
    assert entry.event_ids[0] == "event-000"
    assert set(entry.event_ids[1:]) == {f"event-{n:03d}" for n in range(251, 300)}


def test_one_request_per_cluster_per_batch(responder, channel):
    event = sqs_event(
        warning_for(X86_WORKER, "x"),
        warning_for(ARM_WORKER, "y"),
        warning_for("i-0b0b0b0b0b0b0b0b1", "z"),
    )

    respond(event, None, responder, retime=True)

    clusters = sorted(cluster for cluster, _ in channel.requests)
    assert clusters == ["ray-on-aws", "second-cluster"]


def test_unreachable_head_returns_the_records_for_retry_and_says_so_in_the_ledger(
    responder, ledger, channel
):
    channel.failure = UNREACHABLE
    event = sqs_event(warning_for(X86_WORKER, "x"), load_event("spot-interruption-not-ray.json"))

    response, _ = respond(event, None, responder, retime=True)

    failed_ids = [f["itemIdentifier"] for f in response["batchItemFailures"]]
    assert failed_ids == [event["Records"][0]["messageId"]]
    entry = ledger.get(f"{X86_WORKER}#spot-interruption")
    assert entry.status is Status.FAILED
    assert "no running head node" in entry.reason


def test_retry_after_a_failure_drains_and_counts_the_attempt(responder, ledger, channel):
    channel.failure = UNREACHABLE
    respond(sqs_event(warning_for(X86_WORKER, "x")), None, responder, retime=True)

    channel.failure = None
    response, _ = respond(sqs_event(warning_for(X86_WORKER, "x"), receives=2), None, responder)

    assert response == {"batchItemFailures": []}
    entry = ledger.get(f"{X86_WORKER}#spot-interruption")
    assert (entry.status, entry.attempts) == (Status.DRAINED, 2)


def test_failure_on_the_last_delivery_is_recorded_as_dead_lettered(responder, ledger, channel):
    channel.failure = UNREACHABLE
    event = sqs_event(warning_for(X86_WORKER, "x"), receives=Settings().max_receive_count)

    response, _ = respond(event, None, responder, retime=True)

    assert len(response["batchItemFailures"]) == 1
    assert ledger.get(f"{X86_WORKER}#spot-interruption").status is Status.DEAD_LETTERED


def test_request_refused_by_the_head_is_rejected_not_retried(responder, ledger, channel):
    channel.failure = REFUSED

    response, _ = respond(sqs_event(warning_for(X86_WORKER, "x")), None, responder, retime=True)

    assert response == {"batchItemFailures": []}
    assert ledger.get(f"{X86_WORKER}#spot-interruption").status is Status.REJECTED


def test_head_node_warning_is_alerted_and_never_sent_to_drain(responder, ledger, channel):
    respond(sqs_event(load_event("spot-interruption-head-node.json")), None, responder, retime=True)

    assert channel.requests == []
    assert ledger.get(f"{HEAD}#spot-interruption").status is Status.ALERTED


def test_shutting_down_without_warning_drains_but_after_warning_only_records(
    responder, ledger, channel
):
    def as_ec2_has_it(instance_id, state):
        instances = responder.directory.instances
        instances[instance_id] = replace(
            instances[instance_id], state=state, state_reason="Server.SpotInstanceTermination"
        )

    as_ec2_has_it(X86_WORKER, "shutting-down")
    respond(sqs_event(load_event("state-change-shutting-down.json")), None, responder)
    assert channel.drained == [X86_WORKER]

    respond(sqs_event(warning_for(ARM_WORKER, "w")), None, responder, retime=True)
    as_ec2_has_it(ARM_WORKER, "stopping")
    stopping = load_event("state-change-stopping.json")
    respond(sqs_event(stopping), None, responder)

    assert channel.drained == [X86_WORKER, ARM_WORKER]
    entry = ledger.get(f"{ARM_WORKER}#state-change:stopping")
    assert entry.status is Status.RECORDED
    assert "already drained on warning" in entry.reason


def test_unknown_event_kind_is_recorded_as_ignored_not_retried(responder, ledger):
    event = {**load_event("spot-interruption-terminate.json"), "detail-type": "Something Else"}

    response, _ = respond(sqs_event(event), None, responder)

    assert response == {"batchItemFailures": []}
    assert [e.status for e in ledger.entries()] == [Status.IGNORED]


def test_impacted_jobs_reach_the_ledger_and_its_job_view(responder, ledger):
    respond(sqs_event(warning_for(X86_WORKER, "x")), None, responder, retime=True)

    (hit,) = ledger.job_hits("ray-on-aws#01000000")
    assert hit.instance_id == X86_WORKER
    assert json.loads(json.dumps(hit.impact))["tasks_running"] == 1


def test_notice_held_by_an_invocation_that_died_is_retried_then_taken_over(ledger, channel):
    # GIVEN an invocation that claimed the warning and died before finishing
    clock = {"now": datetime(2026, 11, 22, 10, 0, tzinfo=UTC)}
    directory = FakeDirectory(ray_instance(X86_WORKER))
    responder = Responder(
        directory=directory,
        channel=channel,
        ledger=ledger,
        settings=Settings(),
        clock=lambda: clock["now"],
    )
    dying = Responder(
        directory=directory,
        channel=FakeChannel(failure=KeyboardInterrupt()),
        ledger=ledger,
        settings=Settings(),
        clock=lambda: clock["now"],
    )
    batch = sqs_event(warning_for(X86_WORKER, "x"))
    with pytest.raises(KeyboardInterrupt):
        respond(batch, None, dying)

    # WHEN the batch comes back a few seconds later, the claim still looks alive
    clock["now"] += timedelta(seconds=5)
    soon, _ = respond(batch, None, responder)
    # AND once the claim has outlived any invocation
    clock["now"] += STALE_CLAIM
    later, _ = respond(batch, None, responder)

    # THEN it was retried rather than dropped, and then handled once
    assert len(soon["batchItemFailures"]) == 1
    assert later == {"batchItemFailures": []}
    assert channel.drained == [X86_WORKER]
    assert ledger.get(f"{X86_WORKER}#spot-interruption").status is Status.DRAINED


def sent_notices(channel):
    return [n for _, request in channel.requests for n in request["notices"]]


def test_warned_workers_ask_for_replacement_avoiding_the_pools_hit_in_the_batch(ledger, channel):
    directory = FakeDirectory(ray_instance(X86_WORKER), ray_instance(HEAD, kind="head"))
    responder = Responder(
        directory=directory,
        channel=channel,
        ledger=ledger,
        settings=Settings(replacement_mode=ReplacementMode.ON_DEMAND_FIRST),
    )

    respond(
        sqs_event(warning_for(X86_WORKER, "x"), load_event("spot-interruption-head-node.json")),
        None,
        responder,
        retime=True,
    )

    (sent,) = sent_notices(channel)
    assert sent["replacement"] == {
        "mode": "on-demand-first",
        "unavailable_pools": ["x86_spot_worker@us-west-2a"],
    }
    recorded = ledger.get(f"{X86_WORKER}#spot-interruption")
    assert recorded.replacement["status"] == "requested"
    assert recorded.replacement["node_type"] == "x86_spot_worker_b"


def test_rebalance_asks_for_replacement_without_draining(responder, ledger, channel):
    respond(sqs_event(load_event("rebalance-recommendation.json")), None, responder, retime=True)

    (sent,) = sent_notices(channel)
    assert sent["action"] == "analyse"
    assert sent["replacement"]["mode"] == "spot-first"
    assert channel.drained == []
    recorded = ledger.get(f"{ARM_WORKER}#rebalance-recommendation")
    assert recorded.status is Status.ANALYSED


def running_worker(instance_id):
    event = load_event("state-change-running.json")
    event["detail"]["instance-id"] = instance_id
    return event


def test_a_worker_that_starts_running_has_its_cluster_reconciled_at_once(
    responder, ledger, channel
):
    response, report = respond(sqs_event(running_worker(X86_WORKER)), None, responder)

    assert response == {"batchItemFailures": []}
    assert [(c, r["operation"]) for c, r in channel.requests] == [("ray-on-aws", "reconcile")]
    assert report.reconciled == {
        "ray-on-aws": "1 capacity request(s) released, 0 verdict(s) checked"
    }
    assert ledger.get(f"{X86_WORKER}#state-change:running").status is Status.RECORDED


def test_a_terminated_worker_gets_its_verdicts_checked_in_the_ledger_it_was_judged_in(
    responder, ledger, channel
):
    # GIVEN a warning answered with a verdict for one job (the ledger is SQLite, as in replay)
    respond(sqs_event(load_event("spot-interruption-terminate.json")), None, responder)
    warned = ledger.get(f"{X86_WORKER}#spot-interruption")
    channel.verdict_outcomes = [
        {
            "notice_id": warned.key,
            "job_id": warned.impacted_jobs[0]["job_id"],
            "verdict": "will-recover",
            "outcome": "recovered",
            "node_death": "AUTOSCALER_DRAIN_PREEMPTED",
            "details": [],
        }
    ]
    terminated = load_event("state-change-terminated.json")
    terminated["detail"]["instance-id"] = X86_WORKER

    # WHEN its `terminated` state change comes and the cluster is reconciled
    response, report = respond(sqs_event(terminated), None, responder)

    # THEN the outcome sits beside the verdict in the warning's entry
    assert response == {"batchItemFailures": []}
    assert report.reconciled["ray-on-aws"].endswith("1 verdict(s) checked")
    (job,) = ledger.get(warned.key).impacted_jobs
    assert job["outcome"]["outcome"] == "recovered"


def test_a_failed_reconcile_does_not_fail_the_state_change(responder, ledger, channel):
    channel.failure = UNREACHABLE

    response, report = respond(sqs_event(running_worker(X86_WORKER)), None, responder)

    assert response == {"batchItemFailures": []}
    assert report.reconciled["ray-on-aws"].startswith("reconcile failed")


def test_the_head_starting_or_a_stranger_starting_reconciles_nothing(responder, channel):
    respond(sqs_event(running_worker(HEAD), running_worker(NOT_RAY)), None, responder)

    assert channel.requests == []
