"""`spot-responder`: replay EventBridge events locally, and read the ledger."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_LEDGER = Path.home() / ".spot-responder" / "ledger.sqlite3"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_powertools(verbose=getattr(args, "verbose", False))
    channel = None
    if args.command == "replay" and args.ray_address:
        from spot_responder.adapters.channel_local import LocalClusterChannel

        # The cluster's nodes are listed while the handler's code loads.
        channel = LocalClusterChannel(args.ray_address)
        channel.start_describe()
    # Imported after the environment is set: Powertools reads it at import time.
    from spot_responder.cli import ledger_command, replay_command

    if args.command == "replay":
        try:
            return replay_command.run(args, channel)
        finally:
            if channel is not None:
                channel.close()
    return ledger_command.run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spot-responder",
        description="Ray Spot Responder: replay spot notices locally and read the ledger.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    replay = commands.add_parser(
        "replay",
        help="replay EventBridge events through the responder against a Ray cluster",
        description=(
            "Replay EventBridge events (files as EventBridge delivers them, or SQS batches) "
            "through the same handler code as the Lambda. Without --ray-address an embedded "
            "local Ray cluster is started, whose nodes carry the instance ids of events/, "
            "with a small sample workload on it; it is torn down afterwards."
        ),
    )
    replay.add_argument("events", nargs="+", type=Path, metavar="EVENT.json")
    replay.add_argument(
        "--ray-address",
        help="a running Ray cluster (GCS address host:port); nodes are found by their "
        "label spot-responder/instance-id",
    )
    replay.add_argument("--cluster-name", default="local", help="name recorded in the ledger")
    replay.add_argument(
        "--keep-time",
        action="store_true",
        help="keep each event's own time (by default it is moved to now, so that its "
        "deadline lies ahead)",
    )
    _ledger_option(replay)
    replay.add_argument("--json", action="store_true", help="print one JSON array")
    replay.add_argument("-v", "--verbose", action="store_true", help="show the handler's logs")

    ledger = commands.add_parser("ledger", help="read the ledger")
    views = ledger.add_subparsers(dest="view", required=True)
    listing = views.add_parser("list", help="every notice, newest first")
    jobs = views.add_parser("jobs", help="per Ray job, every interruption that hit it")
    jobs.add_argument("job_id", nargs="?", help="a Ray job id (hex), e.g. 01000000")
    jobs.add_argument("--cluster", default=None, help="the cluster the job ran on")
    show = views.add_parser("show", help="everything about one instance or notice key")
    show.add_argument("key", help="an instance id or a notice key")
    for view in (listing, jobs, show):
        _ledger_option(view)
        view.add_argument("--table", help="read the DynamoDB ledger table instead")
        view.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _ledger_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ledger",
        type=Path,
        default=Path(os.environ.get("SPOT_RESPONDER_LEDGER", DEFAULT_LEDGER)),
        help="the local ledger file (default: %(default)s)",
    )


def _quiet_powertools(*, verbose: bool) -> None:
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "spot-responder")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "SpotResponder")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    # The table already says what the logs would; head-node alerts are marked in it.
    os.environ["POWERTOOLS_LOG_LEVEL"] = "INFO" if verbose else "CRITICAL"


if __name__ == "__main__":
    sys.exit(main())
