"""A ClusterChannel that runs `python -m ray_hooks` as a subprocess (laptops, tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from spot_responder.channel import ChannelUnavailable, ClusterRefused, UnsupportedRay
from spot_responder.contract import (
    ClusterResponse,
    ContractError,
    parse_response,
    unsupported_ray,
)

EXIT_INVALID_REQUEST = 2
EXIT_UNSUPPORTED_RAY = 4


class LocalClusterChannel:
    def __init__(
        self,
        ray_address: str,
        *,
        python: str = sys.executable,
        timeout_s: float = 60,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`env`: set for `ray_hooks` on top of this process's environment (the head's
        cluster config path, RAY_HOOKS_CLUSTER_CONFIG, on a cluster that is not `ray up`'s)."""
        self.ray_address = ray_address
        self.python = python
        self.timeout_s = timeout_s
        self.env = dict(env or {})
        self.requests_sent = 0
        self._describing: subprocess.Popen[str] | None = None

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

    def start_describe(self) -> None:
        """Start listing the nodes now; the next describe() takes this answer.

        The listing costs a process start and Ray's import; started before the caller
        loads its own code, the two overlap instead of adding up.
        """
        if self._describing is None:
            self._describing = self._start(["describe"])

    def close(self) -> None:
        """End a listing started but never taken."""
        started, self._describing = self._describing, None
        if started is not None:
            with started:  # on leaving: its pipes closed, the process waited for
                started.kill()

    def describe(self) -> dict[str, Any]:
        started, self._describing = self._describing, None
        return self._finish(started or self._start(["describe"]), "")

    def run(self, operation: Sequence[str], stdin: str) -> dict[str, Any]:
        return self._finish(self._start(operation), stdin)

    def _start(self, operation: Sequence[str]) -> subprocess.Popen[str]:
        command = [self.python, "-m", "ray_hooks", *operation, "--address", self.ray_address]
        try:
            return subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **self.env} if self.env else None,
            )
        except OSError as exc:
            raise ChannelUnavailable(f"cannot run ray_hooks: {exc}") from exc

    def _finish(self, process: subprocess.Popen[str], stdin: str) -> dict[str, Any]:
        try:
            stdout, stderr = process.communicate(stdin, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise ChannelUnavailable(f"ray_hooks timed out after {self.timeout_s:.0f} s") from None
        answer = _json_or_none(stdout)
        error = (answer or {}).get("error") or _last_line(stderr) or "no output"
        if process.returncode == EXIT_INVALID_REQUEST:
            raise ClusterRefused(f"ray_hooks refused the request: {error}")
        if process.returncode == EXIT_UNSUPPORTED_RAY:
            raise UnsupportedRay(unsupported_ray(answer) or f"unsupported-ray: {error}")
        if process.returncode != 0 or answer is None:
            raise ChannelUnavailable(f"ray_hooks exited {process.returncode}: {error}")
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
