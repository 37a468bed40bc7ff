"""The port to a Ray cluster's head node: one request in, one response out."""

from __future__ import annotations

from typing import Any, Protocol

from spot_responder.contract import ClusterResponse


class ChannelUnavailable(RuntimeError):
    """A passing failure: head not found or unreachable, command failed or timed out.

    The notices it carried are retried.
    """


class ClusterRefused(RuntimeError):
    """The head node refused the request as invalid (it can never succeed)."""


class ClusterChannel(Protocol):
    def send(self, cluster: str, request: dict[str, Any]) -> ClusterResponse:
        """Send a `respond` request; the parsed response."""
        ...

    def call(self, cluster: str, request: dict[str, Any]) -> dict[str, Any]:
        """Run any operation of the contract; the head node's JSON answer as is."""
        ...


class AgentTooOld(ClusterRefused):
    """The head's SSM Agent cannot run the document (it predates `interpolationType:
    ENV_VAR`): no retry helps until the agent is updated, and people must be told."""


class UnsupportedRay(ClusterRefused):
    """The head node's Ray is outside ray_hooks' supported range (exit code 4,
    `unsupported-ray`): recorded as rejected and alarmed, never retried."""
