"""`spot-responder replay`: events → the Lambda's own handler code → a local Ray cluster."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Sequence
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
    if not args.ray_address:
        return run_demo(args, settings)
    started = time.monotonic()
    try:
        report = replay(
            batch, channel or LocalClusterChannel(args.ray_address), args.ledger, settings, args
        )
    except LedgerUnavailable as exc:
        print(f"spot-responder: {exc}", file=sys.stderr)
        return 2
    _show(report, args, elapsed_s=time.monotonic() - started)
    return _exit_code(report)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    """No cluster given: the whole story on a local cluster with the real autoscaler."""
    from spot_responder.cli import demo

    out = story_out(args)
    story = demo.Story(say=lambda line: print(line, file=out, flush=True))
    cluster, plays = demo.start(story)
    try:
        with cluster:
            prepared, termination = demo.prepare(cluster, plays, story)
            try:
                report = _demo_story(args, settings, prepared, termination, story)
            finally:
                prepared.workload.end()
                story.tell("tearing the local cluster down")
    except LedgerUnavailable as exc:
        print(f"spot-responder: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([render.notice_json(n) for n in render.in_record_order(report)], indent=2))
    return _exit_code(report)


def _demo_story(
    args: argparse.Namespace, settings: Settings, prepared: Any, termination: float, story: Any
) -> BatchReport:
    """The replay, then (when it drained the warned node) the join, the kill, the release."""
    from spot_responder.cli import demo

    cluster = prepared.cluster
    channel = LocalClusterChannel(
        cluster.address, env={"RAY_HOOKS_CLUSTER_CONFIG": cluster.config_path}
    )
    batch = demo.demo_batch(args.events, prepared.plays, termination)
    story.tell(f"replaying {len(batch['Records'])} event(s) through the Lambda's code")
    started, asked_at = time.monotonic(), time.time()
    report = replay(batch, channel, args.ledger, settings, args, retime=False)
    _show(report, args, elapsed_s=time.monotonic() - started, out=story_out(args))
    if not any(item.entry.ray_node_id == prepared.warned.node_id for item in report.notices):
        return report
    demo.follow(prepared, termination, asked_at, story)
    story.tell("replaying EC2's `terminated` state change for the instance")
    gone = demo.terminated_batch(prepared.plays[demo.WARNED_INSTANCE])
    after = replay(gone, channel, args.ledger, settings, args, retime=False)
    for cluster_name, outcome in after.reconciled.items():
        story.tell(f"cluster {cluster_name} reconciled: {outcome}")
    demo.finish_work(prepared, story)
    return report


def story_out(args: argparse.Namespace) -> Any:
    """Where the demo tells its story: stdout, or stderr when stdout carries --json."""
    return sys.stderr if args.json else sys.stdout


def _show(
    report: BatchReport, args: argparse.Namespace, *, elapsed_s: float, out: Any = None
) -> None:
    if not args.json:
        table = render.replay_table(report, elapsed_s=elapsed_s, ledger=args.ledger)
        print(table, file=out or sys.stdout, flush=True)
    elif out is None:
        print(json.dumps([render.notice_json(n) for n in render.in_record_order(report)], indent=2))


def _exit_code(report: BatchReport) -> int:
    failed = [m for m, s in report.statuses.items() if s is not RecordStatus.HANDLED]
    return 1 if failed else 0


def replay(
    batch: dict[str, Any],
    channel: LocalClusterChannel,
    ledger_path: Path,
    settings: Settings,
    args: argparse.Namespace,
    *,
    retime: bool | None = None,
) -> BatchReport:
    ledger = SqliteLedger(ledger_path)
    try:
        responder = Responder(
            directory=RayLabelDirectory(channel, cluster=args.cluster_name),
            channel=channel,
            ledger=ledger,
            settings=settings,
        )
        moved = not args.keep_time if retime is None else retime
        _, report = respond(batch, None, responder, retime=moved)
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
