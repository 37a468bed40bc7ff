"""`python -m ray_hooks respond|reconcile|describe`: one JSON document on stdout, logs on stderr.

    python -m ray_hooks respond [--address ADDR] [--request-b64-env VAR]
    python -m ray_hooks reconcile [--address ADDR] [--request-b64-env VAR]
    python -m ray_hooks describe [--address ADDR]

`respond` and `reconcile` read the request from stdin, or base64 from the environment
variable VAR (what the SSM document does). The address is --address, else $RAY_ADDRESS,
else the local cluster. Exit codes: 0 response printed, 2 invalid request, 3 Ray cluster
unreachable, 4 this Ray is not supported (outcome `unsupported-ray`: the version and the
missing features; retrying cannot help).
"""

from __future__ import annotations

import time

#: Taken first, so that `timings` count Ray's import and the connection too.
_STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from typing import Any, NoReturn, TextIO  # noqa: E402

from ray_hooks.cluster import ClusterUnreachable, connect, resolve_address  # noqa: E402
from ray_hooks.compat import UnsupportedRay, unsupported_ray_document  # noqa: E402
from ray_hooks.contract import (  # noqa: E402
    InvalidRequest,
    JsonObject,
    RespondRequest,
    decode_base64_request,
    error_document,
    parse_request,
)
from ray_hooks.output_limit import fit_response  # noqa: E402

log = logging.getLogger("ray_hooks")

EXIT_OK = 0
EXIT_INVALID_REQUEST = 2
EXIT_CLUSTER_UNREACHABLE = 3
EXIT_UNSUPPORTED_RAY = 4
MAX_REQUEST_CHARS = 1_000_000
#: Added to the process's niceness once its drains and capacity requests are out.
ANALYSIS_NICENESS = 10


class _Parser(argparse.ArgumentParser):
    """Usage errors are invalid requests: exit code 2 with the JSON error, not argparse's."""

    def error(self, message: str) -> NoReturn:
        raise InvalidRequest(f"usage: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m ray_hooks", description=__doc__.splitlines()[0])
    operations = parser.add_subparsers(dest="operation", required=True, parser_class=_Parser)
    respond = operations.add_parser("respond", help="drain the nodes of a request, then analyse")
    respond.add_argument("--address", help="GCS address host:port (default $RAY_ADDRESS, auto)")
    respond.add_argument(
        "--request-b64-env", metavar="VAR", help="read the request, base64, from env var VAR"
    )
    reconcile = operations.add_parser(
        "reconcile", help="release replacement capacity that joined or expired"
    )
    reconcile.add_argument("--address", help="GCS address host:port (default $RAY_ADDRESS, auto)")
    reconcile.add_argument(
        "--request-b64-env", metavar="VAR", help="read the request, base64, from env var VAR"
    )
    describe = operations.add_parser("describe", help="list the cluster's nodes and labels")
    describe.add_argument("--address", help="GCS address host:port (default $RAY_ADDRESS, auto)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    level = os.environ.get("RAY_HOOKS_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        stream=sys.stderr,
        level=level if level in logging.getLevelNamesMapping() else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("ray").setLevel(logging.WARNING)
    with _stdout_reserved_for_the_answer() as answer:
        code, document = _run(argv)
        answer.write(json.dumps(document) + "\n")
    return code


def _run(argv: Sequence[str] | None) -> tuple[int, JsonObject]:
    try:
        args = _parser().parse_args(argv)
        if args.operation == "respond":
            text = _read_request_text(args.request_b64_env)
            return EXIT_OK, _respond(parse_request(text), args.address, text)
        if args.operation == "reconcile":
            return EXIT_OK, _reconcile(_read_request_text(args.request_b64_env), args.address)
        return EXIT_OK, _describe(args.address)
    except InvalidRequest as exc:
        log.error("invalid request: %s", exc)
        return EXIT_INVALID_REQUEST, error_document(str(exc))
    except UnsupportedRay as exc:
        log.error("%s", exc)
        return EXIT_UNSUPPORTED_RAY, unsupported_ray_document(exc)
    except ClusterUnreachable as exc:
        log.error("Ray cluster unreachable: %s", exc)
        return EXIT_CLUSTER_UNREACHABLE, error_document(str(exc))
    except Exception as exc:  # never a traceback on stdout; retryable for the Lambda
        log.exception("unexpected failure")
        return EXIT_CLUSTER_UNREACHABLE, error_document(f"internal error: {exc!r}")


def _read_request_text(b64_env: str | None) -> str:
    if b64_env is not None:
        encoded = os.environ.get(b64_env, "")
        if not encoded.strip():
            raise InvalidRequest(f"environment variable {b64_env} is not set or empty")
        if len(encoded) > MAX_REQUEST_CHARS:
            raise InvalidRequest(f"request is larger than {MAX_REQUEST_CHARS} characters")
        return decode_base64_request(encoded)
    text = sys.stdin.read(MAX_REQUEST_CHARS + 1)
    if len(text) > MAX_REQUEST_CHARS:
        raise InvalidRequest(f"request is larger than {MAX_REQUEST_CHARS} characters")
    return text


def _respond(request: RespondRequest, address_flag: str | None, text: str) -> JsonObject:
    from ray_hooks.capacity import notice_replacements
    from ray_hooks.respond import respond

    replacements = notice_replacements(text)  # invalid options: exit 2 before Ray is touched

    log.info(
        "request %s: %d notice(s) for cluster %s",
        request.request_id,
        len(request.notices),
        request.cluster,
    )
    _require_supported_ray()
    address = resolve_address(address_flag)
    response = respond(
        request,
        address,
        connect(address),
        _STARTED,
        replacements=replacements,
        before_analysis=_yield_the_cpu,
    )
    return fit_response(response.to_json())


def _yield_the_cpu() -> None:
    """Once the drains and capacity requests are out, the analysis runs at a lower CPU
    priority: on the head node it must not slow the GCS, nor another command still on its
    way to its own drains (a burst of warnings runs one per cluster and batch at once)."""
    try:
        os.nice(ANALYSIS_NICENESS)
    except OSError as exc:
        log.debug("cannot lower the CPU priority: %s", exc)


def _reconcile(text: str, address_flag: str | None) -> JsonObject:
    from ray_hooks.capacity import (
        CapacityUnavailable,
        parse_reconcile_request,
        reconcile,
        reconcile_response,
    )
    from ray_hooks.cluster import ray_version
    from ray_hooks.outcomes import settle

    request = parse_reconcile_request(text)
    log.info("request %s: reconcile capacity of cluster %s", request.request_id, request.cluster)
    _require_supported_ray()
    address = resolve_address(address_flag)
    gcs = connect(address)
    try:
        result = reconcile(gcs)
    except CapacityUnavailable as exc:
        raise ClusterUnreachable(str(exc)) from exc
    document = reconcile_response(request, result, ray_version(), time.perf_counter() - _STARTED)
    document["verdict_outcomes"] = _verdict_outcomes(gcs, address, settle)
    return document


def _verdict_outcomes(gcs: object, address: str, settle: Callable[..., Any]) -> list[JsonObject]:
    """The judged jobs whose node is gone, with what happened (best effort: [] on failure)."""
    try:
        return [outcome.to_json() for outcome in settle(gcs, address)]
    except Exception:  # the capacity part of reconcile stands
        log.exception("verdict outcomes not read")
        return []


def _describe(address_flag: str | None) -> JsonObject:
    from ray_hooks.describe import describe_document

    address = resolve_address(address_flag)
    return describe_document(connect(address))


def _require_supported_ray() -> None:
    """Before Ray is touched: refuse a Ray whose drain ray_hooks cannot do (exit 4)."""
    from ray_hooks.compat import probe

    probe().require()


@contextmanager
def _stdout_reserved_for_the_answer() -> Iterator[TextIO]:
    """Send whatever else writes to stdout (Ray, C++ logs) to stderr; yield the real stdout."""
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(real_stdout), "w", encoding="utf-8") as answer:
            yield answer
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
        os.close(real_stdout)


if __name__ == "__main__":
    sys.exit(main())
