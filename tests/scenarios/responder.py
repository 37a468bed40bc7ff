"""Sending notices to `python -m ray_hooks respond` the way the Lambda does, and Ray's drains."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tests.ray_hooks_support import notice, request, run_ray_hooks

#: The safety margin of the Lambda (deadline = termination time - margin), scaled down.
MARGIN_S = 3.0


def respond(address: str, *notices: dict[str, Any], request_id: str) -> dict[str, Any]:
    """One respond request, answered; return the response document."""
    run = run_ray_hooks(
        "respond",
        "--address",
        address,
        stdin=json.dumps(request(*notices, request_id=request_id)),
        timeout_s=120,
    )
    assert run.code == 0, f"respond exited {run.code}: {run.stdout} {run.stderr[-2000:]}"
    return run.document


def at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


def warning(instance_id: str, termination_s: float) -> dict[str, Any]:
    """The spot warning the Lambda sends: deadline = termination time - margin."""
    return notice(instance_id, deadline=at(termination_s - MARGIN_S))


def results_by_instance(response: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {result["instance_id"]: result for result in response["results"]}


class Background:
    """A call run on a thread; `result()` joins it and re-raises what it raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self._value = call()
        except BaseException as exc:
            self._error = exc

    def result(self, timeout_s: float = 180) -> Any:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError("the background call did not finish")
        if self._error is not None:
            raise self._error
        return self._value


def drain_reason(name: str) -> int:
    from ray.core.generated import autoscaler_pb2

    return int(autoscaler_pb2.DrainNodeReason.Value(name))


def idle_drain(gcs: Any, node_id: str) -> tuple[bool, str]:
    """What autoscaler v2 sends for an idle node (ray_stopper.py): reason IDLE_TERMINATION,
    deadline 0. The raylet accepts it only while the node is idle."""
    accepted, message = gcs.drain_node(
        node_id,
        drain_reason("DRAIN_NODE_REASON_IDLE_TERMINATION"),
        "Termination of node that's idle for 60.0 seconds.",
        0,
    )
    return bool(accepted), str(message)
