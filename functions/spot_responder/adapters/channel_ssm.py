"""A ClusterChannel over SSM Run Command: the respond document, on the cluster's head node."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from spot_responder.adapters.instances_ec2 import Ec2Directory
from spot_responder.channel import ChannelUnavailable, ClusterRefused, UnsupportedRay
from spot_responder.contract import (
    ClusterResponse,
    ContractError,
    parse_response,
    unsupported_ray,
)
from spot_responder.instances import DirectoryUnavailable

EXIT_INVALID_REQUEST = 2
EXIT_UNSUPPORTED_RAY = 4
TERMINAL = {"Success", "Failed", "Cancelled", "TimedOut", "Cancelling"}
# SSM returns at most 24,000 characters of a command's output. A result without its job
# impacts is about 600 characters and ray_hooks trims the impacts to fit, so a command
# carries at most this many notices; a larger request becomes several parallel commands.
NOTICES_PER_COMMAND = 20


class SsmClusterChannel:
    def __init__(
        self,
        ssm: Any,
        directory: Ec2Directory,
        document: str,
        *,
        timeout_s: float = 45,
        poll_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ssm = ssm
        self._directory = directory
        self.document = document
        self.timeout_s = timeout_s
        self._poll_s = poll_s
        self._sleep = sleep
        self._clock = clock

    def send(self, cluster: str, request: dict[str, Any]) -> ClusterResponse:
        notices = request["notices"]
        parts = [
            {**request, "request_id": f"{request['request_id']}-{n}", "notices": chunk}
            for n, chunk in enumerate(
                notices[start : start + NOTICES_PER_COMMAND]
                for start in range(0, len(notices), NOTICES_PER_COMMAND)
            )
        ]
        if len(parts) == 1:
            return self._parsed(self.call(cluster, request))
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            answers = list(pool.map(lambda part: self._parsed(self.call(cluster, part)), parts))
        return ClusterResponse(
            cluster=cluster,
            request_id=request["request_id"],
            results={k: v for answer in answers for k, v in answer.results.items()},
            timings={"total_s": max(a.timings.get("total_s", 0.0) for a in answers)},
            capacity_requests=tuple(c for a in answers for c in a.capacity_requests),
        )

    @staticmethod
    def _parsed(answer: dict[str, Any]) -> ClusterResponse:
        try:
            return parse_response(answer)
        except ContractError as exc:
            raise ChannelUnavailable(f"unreadable answer from the head node: {exc}") from exc

    def call(self, cluster: str, request: dict[str, Any]) -> dict[str, Any]:
        """Run one operation on the cluster's head node; its JSON answer."""
        try:
            head = self._directory.head_of(cluster)
        except DirectoryUnavailable as exc:
            raise ChannelUnavailable(f"cannot look up the head node of {cluster!r}: {exc}") from exc
        if head is None:
            raise ChannelUnavailable(f"no running head node tagged for cluster {cluster!r}")
        command_id = self._send_command(head.instance_id, request)
        invocation = self._wait(command_id, head.instance_id)
        return self._answer(invocation)

    def _send_command(self, instance_id: str, request: dict[str, Any]) -> str:
        payload = base64.b64encode(json.dumps(request, separators=(",", ":")).encode()).decode()
        try:
            sent = self._ssm.send_command(
                InstanceIds=[instance_id],
                DocumentName=self.document,
                Parameters={"Operation": [str(request["operation"])], "Request": [payload]},
                TimeoutSeconds=max(30, int(self.timeout_s)),
                Comment=f"spot-responder {request.get('request_id', '')}"[:100],
            )
        except (ClientError, BotoCoreError) as exc:
            raise ChannelUnavailable(f"SSM SendCommand to {instance_id} failed: {exc}") from exc
        return str(sent["Command"]["CommandId"])

    def _wait(self, command_id: str, instance_id: str) -> dict[str, Any]:
        deadline = self._clock() + self.timeout_s
        while True:
            self._sleep(self._poll_s)
            try:
                invocation: dict[str, Any] = self._ssm.get_command_invocation(
                    CommandId=command_id, InstanceId=instance_id
                )
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "InvocationDoesNotExist":
                    raise ChannelUnavailable(f"SSM GetCommandInvocation failed: {exc}") from exc
                invocation = {"Status": "Pending"}
            except BotoCoreError as exc:
                raise ChannelUnavailable(f"SSM GetCommandInvocation failed: {exc}") from exc
            if invocation.get("Status") in TERMINAL:
                return invocation
            if self._clock() > deadline:
                raise ChannelUnavailable(
                    f"command {command_id} on {instance_id} still {invocation.get('Status')} "
                    f"after {self.timeout_s:.0f} s"
                )

    def _answer(self, invocation: dict[str, Any]) -> dict[str, Any]:
        output = invocation.get("StandardOutputContent") or ""
        code = invocation.get("ResponseCode")
        if code == EXIT_INVALID_REQUEST:
            raise ClusterRefused(f"head node refused the request: {output.strip()[:300]}")
        if code == EXIT_UNSUPPORTED_RAY:
            raise UnsupportedRay(_unsupported(output))
        if invocation.get("Status") != "Success":
            detail = (invocation.get("StandardErrorContent") or output).strip()[-300:]
            raise ChannelUnavailable(
                f"command {invocation.get('Status')} (exit {code}): {detail or 'no output'}"
            )
        try:
            answer = json.loads(output)
        except json.JSONDecodeError as exc:
            raise ChannelUnavailable(f"unreadable answer from the head node: {exc}") from exc
        if not isinstance(answer, dict):
            raise ChannelUnavailable("unreadable answer from the head node: not an object")
        return answer


def _unsupported(output: str) -> str:
    try:
        reason = unsupported_ray(json.loads(output))
    except json.JSONDecodeError:
        reason = None
    return reason or f"unsupported-ray: {output.strip()[:280]}"
