"""The scheduled reconcile runs on every served cluster; one failure does not stop the rest."""

from spot_responder.channel import ChannelUnavailable
from spot_responder.reconcile import reconcile
from spot_responder.settings import Settings
from tests.support import FakeChannel


class FlakyChannel(FakeChannel):
    def call(self, cluster, request):
        if cluster == "broken":
            raise ChannelUnavailable("no running head node tagged for cluster 'broken'")
        return super().call(cluster, request)


def test_every_cluster_is_reconciled_with_a_reconcile_request():
    channel = FakeChannel()

    report = reconcile(["b", "a", "a"], channel, Settings())

    assert [cluster for cluster, _ in channel.requests] == ["a", "b"]
    assert {r["operation"] for _, r in channel.requests} == {"reconcile"}
    assert [c.released for c in report.clusters] == [1, 1]


def test_a_failing_cluster_is_reported_and_the_others_still_run():
    report = reconcile(["broken", "fine"], FlakyChannel(), Settings())

    assert report.failures == 1
    assert [(c.cluster, c.error is None) for c in report.clusters] == [
        ("broken", False),
        ("fine", True),
    ]


def test_clusters_outside_the_allowlist_are_left_alone():
    channel = FakeChannel()

    reconcile(["mine", "theirs"], channel, Settings(cluster_allowlist=frozenset({"mine"})))

    assert [cluster for cluster, _ in channel.requests] == ["mine"]


def test_the_scheduled_reconcile_writes_verdict_outcomes_into_a_sqlite_ledger(tmp_path):
    from spot_responder.adapters.ledger_sqlite import SqliteLedger
    from spot_responder.ledger import LedgerEntry, Status

    ledger = SqliteLedger(tmp_path / "ledger.sqlite3")  # one thread only, as SQLite wants
    try:
        key = "i-0a1b2c3d4e5f60001#spot-interruption"
        ledger.save(
            LedgerEntry(
                key=key,
                instance_id="i-0a1b2c3d4e5f60001",
                kind="spot-interruption",
                status=Status.DRAINED,
                recorded_at="2026-12-01T10:00:00Z",
                updated_at="2026-12-01T10:00:01Z",
                cluster="a",
                impacted_jobs=({"job_id": "01000000", "verdict": "lost"},),
            )
        )
        channel = FakeChannel(
            verdict_outcomes=[{"notice_id": key, "job_id": "01000000", "outcome": "lost"}]
        )

        report = reconcile(["a"], channel, Settings(), ledger=ledger)

        assert [(c.outcomes, c.error) for c in report.clusters] == [(1, None)]
        (job,) = ledger.get(key).impacted_jobs
        assert job["outcome"]["outcome"] == "lost"
    finally:
        ledger.close()
