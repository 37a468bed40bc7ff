"""Finding and connecting to the Ray cluster's GCS, with errors in the project's own terms.

Only a GcsClient is made: no driver, no `ray.init`. A GCS that is not there is found out in
a few seconds (a TCP probe first, short Ray connect timeouts), not after Ray's default 30 s.
"""

from __future__ import annotations

import os
import socket
from typing import Any

#: The namespace of everything ray_hooks keeps in Ray's KV.
KV_NAMESPACE = b"spot-responder"

#: Ray reads these when the GcsClient is made; without them an unreachable GCS takes 40 s.
_FAST_FAIL_RAY_CONFIG = {
    "RAY_py_gcs_connect_timeout_s": "10",
    "RAY_gcs_rpc_server_connect_timeout_s": "5",
}
_PROBE_TIMEOUT_S = 3.0


class ClusterUnreachable(RuntimeError):
    """The Ray cluster cannot be found or does not answer (exit code 3: retry later)."""


def resolve_address(explicit: str | None) -> str:
    """`host:port` of the GCS: --address, else $RAY_ADDRESS, else the local cluster ("auto")."""
    candidate = explicit or os.environ.get("RAY_ADDRESS") or "auto"
    _configure_fast_failure()
    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:
        return str(canonicalize_bootstrap_address_or_die(candidate))
    except Exception as exc:  # Ray raises ConnectionError, ValueError, ...
        raise ClusterUnreachable(f"cannot find the Ray cluster at {candidate!r}: {exc}") from exc


def connect(address: str) -> Any:
    """A `ray._raylet.GcsClient` connected to the GCS at `address` (host:port)."""
    _probe(address)
    _configure_fast_failure()
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # not in Ray's stub

    from ray_hooks.compat import enable_token_auth_if_token_available

    try:
        enable_token_auth_if_token_available()
        return GcsClient(address=address)
    except Exception as exc:
        raise ClusterUnreachable(f"cannot connect to the Ray GCS at {address}: {exc}") from exc


def ray_version() -> str:
    import ray

    return str(ray.__version__)


def _configure_fast_failure() -> None:
    """Before Ray is imported: short connect timeouts unless the operator set their own."""
    for name, value in _FAST_FAIL_RAY_CONFIG.items():
        os.environ.setdefault(name, value)


def _probe(address: str) -> None:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        raise ClusterUnreachable(
            f"nothing answers at the Ray GCS address {address}: {exc}"
        ) from exc
