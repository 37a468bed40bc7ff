"""A ClusterChannel that runs `python -m ray_hooks` as a subprocess (laptops, tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from spot_responder.channel import ChannelUnavailable, ClusterRefused
from spot_responder.contract import ClusterResponse, ContractError, parse_response

EXIT_INVALID_REQUEST = 2


class LocalClusterChannel:
    def __init__(
        self, ray_address: str, *, python: str = sys.executable, timeout_s: float = 60
    ) -> None:
        self.ray_address = ray_address
        self.python = python
        self.timeout_s = timeout_s
        self.requests_sent = 0

    def send(self, cluster: str, request: dict[str, Any]) -> ClusterResponse:
        data = self.call(cluster, request)
        try:
            return parse_response(data)
        except ContractError as exc:
            raise ChannelUnavailable(str(exc)) from exc

    def call(self, cluster: str, request: dict[str, Any]) -> dict[str, Any]:
        """Run one operation (the request's `operation`) on the cluster; its JSON answer."""
        self.requests_sent += 1
        return self.run([str(request["operation"])], json.dumps(request))

    def describe(self) -> dict[str, Any]:
        return self.run(["describe"], "")

    def run(self, operation: Sequence[str], stdin: str) -> dict[str, Any]:
        command = [self.python, "-m", "ray_hooks", *operation, "--address", self.ray_address]
        try:
            done = subprocess.run(
                command, input=stdin, capture_output=True, text=True, timeout=self.timeout_s
            )
        except subprocess.TimeoutExpired:
            raise ChannelUnavailable(f"ray_hooks timed out after {self.timeout_s:.0f} s") from None
        except OSError as exc:
            raise ChannelUnavailable(f"cannot run ray_hooks: {exc}") from exc
        answer = _json_or_none(done.stdout)
        error = (answer or {}).get("error") or _last_line(done.stderr) or "no output"
        if done.returncode == EXIT_INVALID_REQUEST:
            raise ClusterRefused(f"ray_hooks refused the request: {error}")
        if done.returncode != 0 or answer is None:
            raise ChannelUnavailable(f"ray_hooks exited {done.returncode}: {error}")
        return answer


def _json_or_none(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
