"""A seeded interruption trace: what a spot market does to a cluster's pools over one job.

Per spot pool (a worker type in one zone), interruptions arrive as a Poisson process at
``rate_per_pool_per_hour``; each one is followed, with ``burst_probability``, by another in
the same pool after a gap drawn from ``burst_gap_s`` (and that one again: bursts are
geometric, mean length ``1 / (1 - burst_probability)``). This is the correlation published
traces show: most interruptions within one instance type and zone come within 3 minutes of
each other. With ``unavailable_probability`` an interruption also leaves its pool without
capacity for ``unavailable_s``: a launch there fails as EC2's ``InsufficientInstanceCapacity``.

All parameters are in real (unscaled) seconds; `scaled` divides every time by the
benchmark's time factor. The trace names pools, not nodes: the benchmark warns a node of the
pool that is alive when the interruption comes (none alive: the interruption hits nobody).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class MarketParameters:
    pools: tuple[str, ...]
    rate_per_pool_per_hour: float = 3.0
    burst_probability: float = 0.6
    burst_gap_s: tuple[float, float] = (20.0, 180.0)
    unavailable_probability: float = 0.5
    unavailable_s: float = 360.0
    #: No interruption before this (the job's first tasks run undisturbed) nor after it.
    start_s: float = 60.0
    end_s: float = 600.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Interruption:
    at_s: float  # from the job's start
    pool: str
    in_burst: bool  # follows an earlier interruption of the same pool
    unavailable_s: float  # 0: the pool keeps its capacity

    def scaled(self, factor: float) -> Interruption:
        return Interruption(
            round(self.at_s / factor, 2),
            self.pool,
            self.in_burst,
            round(self.unavailable_s / factor, 2),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def generate(params: MarketParameters, seed: int) -> list[Interruption]:
    """The trace, in real seconds, ordered by time; the same seed gives the same trace."""
    rng = random.Random(seed)
    rate_per_s = params.rate_per_pool_per_hour / 3600.0
    trace: list[Interruption] = []
    for pool in params.pools:
        at = params.start_s
        while True:
            at += rng.expovariate(rate_per_s) if rate_per_s > 0 else float("inf")
            if at >= params.end_s:
                break
            follow, in_burst = at, False
            while follow < params.end_s:
                gone = rng.random() < params.unavailable_probability
                trace.append(
                    Interruption(
                        round(follow, 2), pool, in_burst, params.unavailable_s if gone else 0.0
                    )
                )
                if rng.random() >= params.burst_probability:
                    break
                follow += rng.uniform(*params.burst_gap_s)
                in_burst = True
    return sorted(trace, key=lambda i: (i.at_s, i.pool))
