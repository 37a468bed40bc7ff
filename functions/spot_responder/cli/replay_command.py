"""`spot-responder replay`: events → the Lambda's own handler code → a local Ray cluster."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spot_responder.adapters.channel_local import LocalClusterChannel
from spot_responder.adapters.instances_local import RayLabelDirectory
from spot_responder.adapters.ledger_sqlite import SqliteLedger
from spot_responder.cli import render
from spot_responder.handlers.responder import respond
from spot_responder.ledger import LedgerUnavailable
from spot_responder.responder import BatchReport, RecordStatus, Responder
from spot_responder.settings import Settings, SettingsError


class ReplayInputError(ValueError):
    """An event file cannot be read."""


def run(args: argparse.Namespace, channel: LocalClusterChannel | None = None) -> int:
    """`channel`: one to `args.ray_address` already made (and listing its nodes)."""
    try:
        batch = sqs_batch(args.events)
        settings = Settings.from_env()
    except (ReplayInputError, SettingsError) as exc:
        print(f"spot-responder: {exc}", file=sys.stderr)
        return 2
    with _cluster(args.ray_address, quiet=args.json) as address:
        started = time.monotonic()
        try:
            report = replay(
                batch, channel or LocalClusterChannel(address), args.ledger, settings, args
            )
        except LedgerUnavailable as exc:
            print(f"spot-responder: {exc}", file=sys.stderr)
            return 2
        elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps([render.notice_json(n) for n in render.in_record_order(report)], indent=2))
    else:
        print(render.replay_table(report, elapsed_s=elapsed, ledger=args.ledger))
    failed = [m for m, s in report.statuses.items() if s is not RecordStatus.HANDLED]
    return 1 if failed else 0


def replay(
    batch: dict[str, Any],
    channel: LocalClusterChannel,
    ledger_path: Path,
    settings: Settings,
    args: argparse.Namespace,
) -> BatchReport:
    ledger = SqliteLedger(ledger_path)
    try:
        responder = Responder(
            directory=RayLabelDirectory(channel, cluster=args.cluster_name),
            channel=channel,
            ledger=ledger,
            settings=settings,
        )
        _, report = respond(batch, None, responder, retime=not args.keep_time)
        return report
    finally:
        ledger.close()


def sqs_batch(paths: Sequence[Path]) -> dict[str, Any]:
    """The events as the Lambda receives them: one SQS record per EventBridge event."""
    records: list[dict[str, Any]] = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ReplayInputError(f"cannot read {path}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise ReplayInputError(f"{path} is not JSON: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("Records"), list):
            records.extend(data["Records"])
        else:
            records.append(_sqs_record(json.dumps(data)))
    return {"Records": records}


def _sqs_record(body: str) -> dict[str, Any]:
    return {
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "local-replay",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": str(int(time.time() * 1000)),
        },
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:local:000000000000:spot-responder-replay",
        "awsRegion": "local",
    }


@contextmanager
def _cluster(address: str | None, *, quiet: bool) -> Iterator[str]:
    if address:
        yield address
        return
    from spot_responder.cli.embedded import EmbeddedRayCluster, start_sample_workload

    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr)

    say("starting an embedded local Ray cluster (head + 2 spot workers)...")
    with EmbeddedRayCluster() as cluster:
        workload = start_sample_workload(cluster.address)
        say(f"cluster up at {cluster.address}; sample workload running; replaying...")
        try:
            yield cluster.address
        finally:
            del workload
            say("tearing the embedded cluster down")
