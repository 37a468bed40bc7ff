"""A ClusterChannel over SSM Run Command: the respond document, on the cluster's head node."""

from __future__ import annotations

import base64
import contextvars
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from spot_responder import budget
from spot_responder.adapters.instances_ec2 import Ec2Directory
from spot_responder.channel import (
    AgentTooOld,
    ChannelUnavailable,
    ClusterRefused,
    UnsupportedRay,
)
from spot_responder.contract import (
    ClusterResponse,
    ContractError,
    parse_response,
    unsupported_ray,
)
from spot_responder.instances import DirectoryUnavailable
from spot_responder.observability import logger

EXIT_INVALID_REQUEST = 2
EXIT_AGENT_TOO_OLD = 5  # the document's own check: the agent did not set SSM_Operation
# The first SSM Agent that passes parameters as environment variables (ENV_VAR).
MIN_AGENT_VERSION = (3, 3, 2746, 0)
# SendCommand's TimeoutSeconds (how long the command may wait to start) has this minimum.
MIN_DELIVERY_TIMEOUT_S = 30
# Polling GetCommandInvocation: first after this, then each wait this much longer, capped.
FIRST_POLL_S = 0.25
POLL_GROWTH = 1.6
MAX_POLL_S = 2.0
# A call with less time than this left is not started: it could not be waited for.
MIN_CALL_S = 2.0
# A head whose agent was Online is not asked again for this long.
AGENT_CHECK_TTL_S = 60.0
EXIT_UNSUPPORTED_RAY = 4  # ray_hooks: the head's Ray is outside the supported range
TERMINAL = {"Success", "Failed", "Cancelled", "TimedOut", "Cancelling"}
# SSM returns at most 24,000 characters of a command's output. A result without its job
# impacts is about 600 characters and ray_hooks trims the impacts to fit, so a command
# carries at most this many notices; a larger request becomes several parallel commands.
NOTICES_PER_COMMAND = 20


class SsmClusterChannel:
    """Every wait is bounded by `timeout_s` and by the budget of the calling invocation
    (`spot_responder.budget`); a command given up on is cancelled."""

    def __init__(
        self,
        ssm: Any,
        directory: Ec2Directory,
        document: str,
        *,
        timeout_s: float = 45,
        poll_s: float = FIRST_POLL_S,
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
        self._online_until: dict[str, float] = {}

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
            # Each part's thread runs in a copy of this context: the same budget applies.
            futures = [
                pool.submit(contextvars.copy_context().run, self._send_part, cluster, part)
                for part in parts
            ]
            answers = [future.result() for future in futures]
        return ClusterResponse(
            cluster=cluster,
            request_id=request["request_id"],
            results={k: v for answer in answers for k, v in answer.results.items()},
            timings={"total_s": max(a.timings.get("total_s", 0.0) for a in answers)},
            capacity_requests=tuple(c for a in answers for c in a.capacity_requests),
        )

    def _send_part(self, cluster: str, part: dict[str, Any]) -> ClusterResponse:
        return self._parsed(self.call(cluster, part))

    @staticmethod
    def _parsed(answer: dict[str, Any]) -> ClusterResponse:
        try:
            return parse_response(answer)
        except ContractError as exc:
            raise ChannelUnavailable(f"unreadable answer from the head node: {exc}") from exc

    def call(self, cluster: str, request: dict[str, Any]) -> dict[str, Any]:
        """Run one operation on the cluster's head node; its JSON answer."""
        deadline = self._deadline()
        try:
            head = self._directory.head_of(cluster)
        except DirectoryUnavailable as exc:
            raise ChannelUnavailable(f"cannot look up the head node of {cluster!r}: {exc}") from exc
        if head is None:
            raise ChannelUnavailable(f"no running head node tagged for cluster {cluster!r}")
        self._check_agent(head.instance_id)
        command_id = self._send_command(head.instance_id, request)
        invocation = self._wait(command_id, head.instance_id, deadline)
        return self._answer(invocation)

    def _deadline(self) -> float:
        """When waiting must stop, on this channel's clock: its own timeout or the budget."""
        wait_s = float(self.timeout_s)
        granted = budget.current()
        if granted is not None:
            if granted.remaining_s() < MIN_CALL_S:
                raise ChannelUnavailable("no time left in this invocation to wait for the head")
            wait_s = min(wait_s, granted.remaining_s())
        return self._clock() + wait_s

    def _check_agent(self, instance_id: str) -> None:
        """Do not send to an agent that is offline or too old to run the document.

        DescribeInstanceInformation tells both (PingStatus, AgentVersion). When it cannot be
        asked, the command is sent anyway: the wait is bounded and the document checks the
        agent itself.
        """
        if self._online_until.get(instance_id, float("-inf")) > self._clock():
            return
        try:
            found = self._ssm.describe_instance_information(
                Filters=[{"Key": "InstanceIds", "Values": [instance_id]}]
            ).get("InstanceInformationList", [])
        except (ClientError, BotoCoreError):
            return
        if not found:
            raise ChannelUnavailable(f"the SSM Agent of head node {instance_id} is not registered")
        agent = found[0]
        status = agent.get("PingStatus")
        if status != "Online":
            raise ChannelUnavailable(f"the SSM Agent of head node {instance_id} is {status}")
        version = agent.get("AgentVersion") or ""
        if _version(version) < MIN_AGENT_VERSION:
            raise AgentTooOld(
                f"the SSM Agent {version or '(unknown version)'} of head node {instance_id} is "
                f"older than {'.'.join(map(str, MIN_AGENT_VERSION))}: it cannot pass the "
                "document's parameters (interpolationType ENV_VAR); update the agent"
            )
        self._online_until[instance_id] = self._clock() + AGENT_CHECK_TTL_S

    def _send_command(self, instance_id: str, request: dict[str, Any]) -> str:
        payload = base64.b64encode(json.dumps(request, separators=(",", ":")).encode()).decode()
        try:
            sent = self._ssm.send_command(
                InstanceIds=[instance_id],
                DocumentName=self.document,
                Parameters={"Operation": [str(request["operation"])], "Request": [payload]},
                TimeoutSeconds=MIN_DELIVERY_TIMEOUT_S,
                Comment=f"spot-responder {request.get('request_id', '')}"[:100],
            )
        except (ClientError, BotoCoreError) as exc:
            raise ChannelUnavailable(f"SSM SendCommand to {instance_id} failed: {exc}") from exc
        return str(sent["Command"]["CommandId"])

    def _wait(self, command_id: str, instance_id: str, deadline: float) -> dict[str, Any]:
        started = self._clock()
        pause = self._poll_s
        status = "Pending"
        while True:
            self._sleep(max(0.0, min(pause, deadline - self._clock())))
            pause = min(pause * POLL_GROWTH, MAX_POLL_S)
            try:
                invocation: dict[str, Any] = self._ssm.get_command_invocation(
                    CommandId=command_id, InstanceId=instance_id
                )
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "InvocationDoesNotExist":
                    self._cancel(command_id, instance_id)
                    raise ChannelUnavailable(f"SSM GetCommandInvocation failed: {exc}") from exc
                invocation = {"Status": "Pending"}
            except BotoCoreError as exc:
                self._cancel(command_id, instance_id)
                raise ChannelUnavailable(f"SSM GetCommandInvocation failed: {exc}") from exc
            status = str(invocation.get("Status"))
            if status in TERMINAL:
                return invocation
            if self._clock() >= deadline:
                self._cancel(command_id, instance_id)
                raise ChannelUnavailable(
                    f"command {command_id} on {instance_id} still {status} after "
                    f"{self._clock() - started:.0f} s; cancelled"
                )

    def _cancel(self, command_id: str, instance_id: str) -> None:
        """Cancel a command given up on, so that it cannot run after its retry was sent.

        Best effort (AWS does not promise a cancelled command stops); a failure is logged.
        """
        try:
            self._ssm.cancel_command(CommandId=command_id, InstanceIds=[instance_id])
        except (ClientError, BotoCoreError) as exc:
            logger.warning(f"could not cancel command {command_id} on {instance_id}: {exc}")

    def _answer(self, invocation: dict[str, Any]) -> dict[str, Any]:
        output = invocation.get("StandardOutputContent") or ""
        code = invocation.get("ResponseCode")
        if code == EXIT_AGENT_TOO_OLD:
            raise AgentTooOld(f"head node cannot run the document: {output.strip()[:300]}")
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


def _version(text: str) -> tuple[int, ...]:
    """ "3.3.2746.0" as (3, 3, 2746, 0); anything unreadable sorts first (too old)."""
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return ()


def _unsupported(output: str) -> str:
    try:
        reason = unsupported_ray(json.loads(output))
    except json.JSONDecodeError:
        reason = None
    return reason or f"unsupported-ray: {output.strip()[:280]}"
