"""Fixtures shared by the test suites. Each block below belongs to one concern."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from spot_responder.cli.embedded import EmbeddedRayCluster


# ---------------------------------------------------------------- Ray: embedded local cluster
# A real local Ray cluster: head (i-0d0d0d0d0d0d0d0d0) and two spot workers
# (i-0a1b2c3d4e5f60001 x86, i-0a1b2c3d4e5f60002 arm), labelled as the nodes of `events/`.
# One per test module (starting one takes ~10 s on two cores); modules that need another
# worker add it with `ray_cluster.add_worker(...)` (at most 4 raylets per cluster).


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[EmbeddedRayCluster]:
    from spot_responder.cli.embedded import EmbeddedRayCluster

    with EmbeddedRayCluster() as cluster:
        yield cluster
