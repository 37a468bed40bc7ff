"""The time one invocation may spend waiting on clusters, read from the Lambda context.

A Lambda that runs past its timeout is killed: its whole batch comes back only after the
queue's visibility timeout, minutes later. So every wait (an SSM command, a poll, a
thread) is bounded by the invocation's remaining time, less a reserve for writing the
outcomes and handing failed records back.

The budget in force is a context variable: the responder sets it around each cluster
call (each in its own thread), and the cluster channel reads it, so a channel needs no
extra parameter to stop waiting in time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

#: Kept back from the remaining time: ledger writes, metrics, ChangeMessageVisibility
#: (6 s of a 40 s function; a quarter of a shorter one).
RESERVE_S = 6.0
RESERVE_SHARE = 0.25


class RemainingTime(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


@dataclass(frozen=True)
class Budget:
    """A deadline on the monotonic clock."""

    deadline: float
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    @classmethod
    def of(cls, context: RemainingTime, reserve_s: float = RESERVE_S) -> Budget:
        """What an invocation may spend on clusters: its remaining time less the reserve."""
        remaining = context.get_remaining_time_in_millis() / 1000
        reserve = min(reserve_s, remaining * RESERVE_SHARE)
        return cls(time.monotonic() + max(0.0, remaining - reserve))

    @classmethod
    def unlimited(cls) -> Budget:
        return cls(float("inf"))

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - self.clock())

    @property
    def spent(self) -> bool:
        return self.remaining_s() <= 0


_current: ContextVar[Budget | None] = ContextVar("spot_responder_budget", default=None)


def current() -> Budget | None:
    """The budget of the cluster call running in this thread, if one was set."""
    return _current.get()


@contextmanager
def applied(budget: Budget) -> Iterator[Budget]:
    token = _current.set(budget)
    try:
        yield budget
    finally:
        _current.reset(token)
