"""For any Ray task or actor: is my node going, and when? The deadline, from the Ray drain.

When the responder (or anyone) drains a node with reason PREEMPTION, Ray keeps the node's
deadline in the GCS - and tells only Ray Train, Serve and Data. This module gives it to any
code running on the node::

    from ray_hooks import preemption

    notice = preemption.deadline()          # None while the node is not draining
    if notice is not None:
        print(notice.at, notice.seconds_left)   # None, None when Ray holds no deadline

    with preemption.on_notice(save):        # save() runs once, in a thread, when told to go
        for step in range(steps):
            work(step)

    notice = await preemption.wait()        # in an async actor: returns when told to go

Cost: one watcher per node, not per task. The first process on a node that asks takes a file
lock beside the node's state file and becomes the node's watcher: it asks the GCS for the
draining nodes once per POLL_S (`GcsClient.get_draining_nodes`, the call Ray Serve and Data
make; ray_hooks.compat's equivalent on a Ray before 2.60) and writes the answer into the
node's state file when it changes. Every other process on the node reads only that file (a
`stat` every READ_S). If the watcher's process ends, the kernel frees the lock and the next
reader takes over. A process that never asks costs nothing. Outside a Ray worker or driver
(no `ray.init`), `deadline()` says None.

Speed: the GCS tells no one when a node starts draining (`GcsNodeManager::SetNodeDraining`
publishes nothing), so a watcher that only polls learns of a drain up to POLL_S late. The
responder's own drains do not wait for the poll: the watcher listens on a TCP port of its
node's address, kept in Ray's KV under `preemption-hint/<node id>`, and the drain command
(`tell`, ray_hooks.drain) connects there once the GCS has accepted the drain. The hint names
the node and carries nothing else: it only makes the watcher read the GCS at once, and again
after 0.2, 0.6, 1.4 and 3 s while the drain does not show (at most one hint per HINT_GAP_S
is taken), so a stray or forged connection can neither invent a deadline nor raise the GCS
reads much above one a second. A drain by anything else (the autoscaler, `ray
drain-node`) is seen at the next poll.

The deadline is the one Ray holds: the earliest real termination time the responder was told
(see ray_hooks.drain), or none when the node was drained without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import select
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray_hooks import compat
from ray_hooks.cluster import KV_NAMESPACE

log = logging.getLogger(__name__)

#: Seconds between two GCS reads by a node's watcher.
POLL_S = float(os.environ.get("RAY_HOOKS_PREEMPTION_POLL_S", "1.0"))
#: Seconds between two reads of the node's state file by the other processes.
READ_S = float(os.environ.get("RAY_HOOKS_PREEMPTION_READ_S", "0.05"))
#: Least seconds between two GCS reads that hints cause.
HINT_GAP_S = float(os.environ.get("RAY_HOOKS_PREEMPTION_HINT_GAP_S", "5.0"))
#: After a hint, the first re-read (if the drain did not show yet); each next one twice as late.
HINT_REREAD_S = 0.2
#: Seconds `tell` waits for the watcher's port, and the watcher for a hint's bytes.
HINT_TIMEOUT_S = 0.5
_RPC_TIMEOUT_S = 5


def tell(gcs: Any, node_id: str, timeout_s: float = HINT_TIMEOUT_S) -> bool:
    """Tell `node_id`'s watcher, if it has one, to read the GCS now (for the drain command,
    once the drain is accepted). True when the hint was delivered; never raises."""
    try:
        address = gcs.internal_kv_get(_hint_key(node_id), KV_NAMESPACE, timeout_s)
        if not address:
            return False
        host, port = address.decode().rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=timeout_s) as connection:
            connection.sendall(node_id.encode())
        return True
    except Exception:  # the watcher's poll is the fallback; the drain stands either way
        log.debug("no preemption hint delivered to node %s", node_id, exc_info=True)
        return False


def _hint_key(node_id: str) -> bytes:
    return f"preemption-hint/{node_id}".encode()


@dataclass(frozen=True)
class Deadline:
    """The node is draining: when it goes (None when Ray holds no deadline)."""

    at: datetime | None

    @property
    def seconds_left(self) -> float | None:
        if self.at is None:
            return None
        return (self.at - datetime.now(UTC)).total_seconds()


def deadline() -> Deadline | None:
    """None while this node is not draining; else when it goes. Starts the node's watch."""
    watch = _watch()
    return None if watch is None else watch.current()


@contextlib.contextmanager
def on_notice(callback: Callable[[Deadline], Any]) -> Iterator[None]:
    """Run `callback(deadline)` once, in a thread, as soon as the node is told to go while the
    block runs (at once if it already was)."""
    watch = _watch()
    if watch is None:
        yield
        return
    token = watch.subscribe(callback)
    try:
        yield
    finally:
        watch.unsubscribe(token)


async def wait(poll_s: float = READ_S) -> Deadline:
    """Return once this node is told to go (for async actors; never blocks the event loop)."""
    while True:
        notice = deadline()
        if notice is not None:
            return notice
        await asyncio.sleep(poll_s)


# ---------------------------------------------------------------- the node's watch


class _NodeWatch:
    """One per process: leads the node's watch (GCS reads) or follows it (file reads)."""

    def __init__(self, node_id: str, gcs: Any, directory: Path, node_ip: str) -> None:
        self.node_id = node_id
        self._gcs = gcs
        self._node_ip = node_ip
        self._hints: socket.socket | None = None
        self._last_hinted = float("-inf")
        self._reread = float("inf")  # no re-reads until a hint comes
        self._state = directory / f"{node_id}.json"
        self._lock_path = directory / f"{node_id}.lock"
        self._lock: Any = None
        self._seen: Deadline | None = None
        self._draining = False
        self._mtime = 0.0
        self._subscribers: dict[int, Callable[[Deadline], Any]] = {}
        self._notified: set[int] = set()
        self._mutex = threading.Lock()
        self._next_token = 0
        self._refresh()
        threading.Thread(target=self._run, name="preemption-watch", daemon=True).start()

    def current(self) -> Deadline | None:
        with self._mutex:
            return self._seen if self._draining else None

    def subscribe(self, callback: Callable[[Deadline], Any]) -> int:
        with self._mutex:
            self._next_token += 1
            token = self._next_token
            self._subscribers[token] = callback
        self._notify()
        return token

    def unsubscribe(self, token: int) -> None:
        with self._mutex:
            self._subscribers.pop(token, None)
            self._notified.discard(token)

    @property
    def leads(self) -> bool:
        return self._lock is not None

    def _run(self) -> None:
        while True:
            try:
                self._refresh()
            except Exception:  # a passing GCS or disk failure: try again next round
                log.debug("preemption watch round failed", exc_info=True)
            if self.leads:
                self._wait_for_hint(self._next_poll_s())
            else:
                time.sleep(READ_S)

    def _refresh(self) -> None:
        if not self.leads:
            self._try_to_lead()
        if self.leads:
            self._poll_gcs()
        else:
            self._read_state()

    def _try_to_lead(self) -> None:
        handle = open(self._lock_path, "a")  # noqa: SIM115  # held for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return
        self._lock = handle
        self._listen()

    def _listen(self) -> None:
        """Open the hint port and say where it is in Ray's KV (once per watcher)."""
        try:
            hints = socket.create_server((self._node_ip, 0), backlog=16)
            host, port = hints.getsockname()[:2]
            self._gcs.internal_kv_put(
                _hint_key(self.node_id),
                f"{host}:{port}".encode(),
                True,
                KV_NAMESPACE,
                _RPC_TIMEOUT_S,
            )
        except Exception:  # no hints then: the poll alone tells this node
            log.debug("preemption hints not available on node %s", self.node_id, exc_info=True)
            return
        self._hints = hints

    def _next_poll_s(self) -> float:
        """POLL_S; after a hint, until the drain shows, 0.2 s, then 0.4, 0.8, 1.6 (a Ray
        before 2.60 lists a drain 0.2-0.5 s after accepting it: the read at the hint can
        miss it)."""
        if self._draining or self._reread > POLL_S:
            return POLL_S
        wait, self._reread = self._reread, self._reread * 2
        return wait

    def _wait_for_hint(self, timeout_s: float) -> None:
        """Sleep `timeout_s`, or less when a hint for this node comes (HINT_GAP_S apart)."""
        until = time.monotonic() + timeout_s
        while self._hints is not None and (left := until - time.monotonic()) > 0:
            readable, _, _ = select.select([self._hints], [], [], left)
            if readable and self._hinted() and time.monotonic() - self._last_hinted >= HINT_GAP_S:
                self._last_hinted = time.monotonic()
                self._reread = HINT_REREAD_S
                return
        time.sleep(max(0.0, until - time.monotonic()))

    def _hinted(self) -> bool:
        assert self._hints is not None
        try:
            connection, _ = self._hints.accept()
        except OSError:
            return False
        with connection:
            connection.settimeout(HINT_TIMEOUT_S)
            try:
                said = connection.recv(64)
            except OSError:
                return False
        return said == self.node_id.encode()

    def _poll_gcs(self) -> None:
        draining = compat.draining_nodes(self._gcs, _RPC_TIMEOUT_S)
        deadline_ms = draining.get(self.node_id)
        state = {"draining": deadline_ms is not None, "deadline_ms": deadline_ms or 0}
        if self._update(state):
            self._write_state(state)

    def _write_state(self, state: dict[str, Any]) -> None:
        partial = self._state.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(state))
        partial.replace(self._state)

    def _read_state(self) -> None:
        try:
            mtime = self._state.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        with contextlib.suppress(ValueError, OSError):
            self._update(json.loads(self._state.read_text()))

    def _update(self, state: dict[str, Any]) -> bool:
        draining = bool(state.get("draining"))
        deadline_ms = int(state.get("deadline_ms") or 0)
        seen = Deadline(_at(deadline_ms)) if draining else None
        with self._mutex:
            changed = (draining, seen) != (self._draining, self._seen)
            self._draining, self._seen = draining, seen
        if changed:
            self._notify()
        return changed

    def _notify(self) -> None:
        with self._mutex:
            if not self._draining or self._seen is None:
                return
            due = [(t, c) for t, c in self._subscribers.items() if t not in self._notified]
            self._notified.update(token for token, _ in due)
            seen = self._seen
        for _, callback in due:
            threading.Thread(target=callback, args=(seen,), name="preemption-notice").start()


def _at(deadline_ms: int) -> datetime | None:
    return datetime.fromtimestamp(deadline_ms / 1000, tz=UTC) if deadline_ms else None


_watches: dict[str, _NodeWatch] = {}
_watches_mutex = threading.Lock()


def _watch() -> _NodeWatch | None:
    """This process's watch of its node; None outside a connected Ray worker or driver."""
    import ray

    if not ray.is_initialized():
        return None
    node_id = ray.get_runtime_context().get_node_id()
    with _watches_mutex:
        if node_id not in _watches:
            from ray._private.worker import global_worker

            directory = Path(
                os.environ.get("RAY_HOOKS_PREEMPTION_DIR")
                or Path(tempfile.gettempdir()) / "spot-responder-preemption"
            )
            directory.mkdir(parents=True, exist_ok=True)
            gcs = global_worker.gcs_client  # type: ignore[attr-defined]  # set by ray.init
            node_ip = global_worker.node_ip_address
            _watches[node_id] = _NodeWatch(node_id, gcs, directory, node_ip)
        return _watches[node_id]
