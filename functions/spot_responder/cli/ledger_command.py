"""`spot-responder ledger list|jobs|show`: read the local or the DynamoDB ledger."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from spot_responder.cli import render
from spot_responder.ledger import Ledger, LedgerUnavailable, job_key


def run(args: argparse.Namespace) -> int:
    try:
        ledger = _open(args)
        return _show(args, ledger)
    except LedgerUnavailable as exc:
        print(f"spot-responder: {exc}", file=sys.stderr)
        return 2


def _open(args: argparse.Namespace) -> Ledger:
    if args.table:
        import boto3

        from spot_responder.adapters.ledger_dynamodb import DynamoDbLedger

        return DynamoDbLedger(boto3.resource("dynamodb").Table(args.table))
    if not args.ledger.exists():
        raise LedgerUnavailable(f"no ledger at {args.ledger} (replay something first)")
    from spot_responder.adapters.ledger_sqlite import SqliteLedger

    return SqliteLedger(args.ledger)


def _show(args: argparse.Namespace, ledger: Ledger) -> int:
    if args.view == "jobs":
        wanted = None
        if args.job_id:
            wanted = job_key(args.cluster or "local", args.job_id)
        hits = ledger.job_hits(wanted)
        if args.json:
            print(json.dumps([asdict(h) for h in hits], indent=2))
        else:
            print(render.jobs_table(hits))
        return 0
    entries = ledger.entries()
    if args.view == "show":
        # One instance's full record: always the complete JSON, there is no short form.
        entries = [e for e in entries if args.key in {e.key, e.instance_id}]
        if not entries:
            print(f"spot-responder: nothing recorded for {args.key}", file=sys.stderr)
            return 1
    if args.json or args.view == "show":
        print(json.dumps([render.entry_json(e) for e in entries], indent=2))
    else:
        print(render.ledger_table(entries))
    return 0
