"""Where outstanding capacity requests and interrupted pools live: the GCS internal KV.

Namespace ``spot-responder``: one key per interrupted instance
(``capacity-request/<instance id>``, so a second notice for the same instance does not ask
twice) and one per pool interrupted on this cluster (``unavailable-pool/<type>@<zone>``,
for ``UNAVAILABLE_WINDOW_S``, on top of the pools the Lambda names). A file lock on the
head serialises the read-change-send steps of concurrent ``ray_hooks`` runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import re
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from ray_hooks.capacity.record import CapacityRequest, iso, parse_iso
from ray_hooks.cluster import KV_NAMESPACE
from ray_hooks.replacement import Pool, parse_pool

log = logging.getLogger(__name__)

NAMESPACE = KV_NAMESPACE
_REQUEST_PREFIX = b"capacity-request/"
_POOL_PREFIX = b"unavailable-pool/"
RPC_TIMEOUT_S = 10.0


class CapacityUnavailable(RuntimeError):
    """The GCS did not answer while capacity requests were read, kept or sent."""


class Kv(Protocol):
    """The part of Ray's GcsClient used here: internal KV, node table, address."""

    address: str

    def internal_kv_get(
        self, key: bytes, namespace: bytes | None, timeout: float | None = ...
    ) -> bytes | None: ...

    def internal_kv_put(
        self,
        key: bytes,
        value: bytes,
        overwrite: bool,
        namespace: bytes | None,
        timeout: float | None = ...,
    ) -> int: ...

    def internal_kv_del(
        self, key: bytes, del_by_prefix: bool, namespace: bytes | None, timeout: float | None = ...
    ) -> int: ...

    def internal_kv_keys(
        self, prefix: bytes, namespace: bytes | None, timeout: float | None = ...
    ) -> list[bytes]: ...

    def internal_kv_multi_get(
        self, keys: list[bytes], namespace: bytes | None, timeout: float | None = ...
    ) -> dict[bytes, bytes]: ...

    def get_all_node_info(self, timeout: float | None = None) -> Mapping[Any, Any]: ...

    def get_draining_nodes(self, timeout: float | None = None) -> Mapping[str, int]: ...


class RequestStore:
    """Capacity requests and remembered pools in the GCS internal KV."""

    def __init__(self, gcs: Kv) -> None:
        self._gcs = gcs

    def requests(self) -> list[CapacityRequest]:
        requests = []
        for key, value in self._values(_REQUEST_PREFIX).items():
            try:
                requests.append(CapacityRequest.from_json(json.loads(value)))
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("dropping an unreadable capacity request %r", key)
                self._delete(key)
        return requests

    def put(self, request: CapacityRequest) -> None:
        value = json.dumps(request.to_json()).encode()
        self._call(
            self._gcs.internal_kv_put, _key(_REQUEST_PREFIX, request.instance_id), value, True
        )

    def delete(self, instance_id: str) -> None:
        self._delete(_key(_REQUEST_PREFIX, instance_id))

    def remember(self, pool: Pool, until: datetime) -> None:
        value = json.dumps({"pool": str(pool), "until": iso(until)}).encode()
        self._call(self._gcs.internal_kv_put, _key(_POOL_PREFIX, str(pool)), value, True)

    def unavailable_pools(self, now: datetime) -> set[Pool]:
        return {pool for pool, until in self._pools() if until > now}

    def forget_expired_pools(self, now: datetime) -> None:
        for pool, until in self._pools():
            if until <= now:
                self._delete(_key(_POOL_PREFIX, str(pool)))

    def _pools(self) -> list[tuple[Pool, datetime]]:
        pools = []
        for value in self._values(_POOL_PREFIX).values():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                data = json.loads(value)
                until = parse_iso(data["until"])
                if until is not None:
                    pools.append((parse_pool(data["pool"]), until))
        return pools

    def _values(self, prefix: bytes) -> dict[bytes, bytes]:
        keys = self._call(self._gcs.internal_kv_keys, prefix)
        if not keys:
            return {}
        values: dict[bytes, bytes] = self._call(self._gcs.internal_kv_multi_get, list(keys))
        return values

    def _delete(self, key: bytes) -> None:
        self._call(self._gcs.internal_kv_del, key, False)

    @staticmethod
    def _call(method: Any, *args: Any) -> Any:
        try:
            return method(*args, NAMESPACE, RPC_TIMEOUT_S)
        except Exception as exc:  # ray.exceptions.RpcError when the GCS stops answering
            raise CapacityUnavailable(f"GCS internal KV: {exc}") from exc


def _key(prefix: bytes, name: str) -> bytes:
    return prefix + name.encode()


@contextlib.contextmanager
def exclusive(gcs: Kv) -> Iterator[None]:
    """One ray_hooks at a time reads, changes and sends this cluster's requests."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", gcs.address)
    path = Path(tempfile.gettempdir()) / f"ray_hooks-capacity-{name}.lock"
    with open(path, "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
