"""ray_hooks.compat reads each Ray's compiled signatures and answers in one shape."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ray_hooks import compat


@pytest.mark.parametrize(
    ("signature", "names"),
    [
        (
            "InnerGcsClient.drain_node(self, string node_id: c_string, int32_t reason: int32_t, "
            "string reason_message: c_string, int64_t deadline_timestamp_ms: int64_t)",
            ("node_id", "reason", "reason_message", "deadline_timestamp_ms"),
        ),
        (
            "InnerGcsClient.drain_node(self, string node_id: c_string, int32_t reason: int32_t, "
            "string reason_message: c_string, int64_t deadline_timestamp_ms: int64_t, "
            "timeout: Optional[int | float] = None)",
            ("node_id", "reason", "reason_message", "deadline_timestamp_ms", "timeout"),
        ),
        (
            "InnerGcsClient.request_cluster_resource_constraint(self, "
            "vector[unordered_map[string,double]] bundles: c_vector[unordered_map[c_string, "
            "cython.double]], vector[int64_t] count_array: c_vector[int64_t], timeout_s=None)",
            ("bundles", "count_array", "timeout_s"),
        ),
        ("GlobalStateAccessor.get_draining_nodes(self)", ()),
    ],
    ids=["drain 2.50", "drain 2.60", "constraint 2.50", "no parameters"],
)
def test_parameters_are_read_from_the_compiled_signature(
    signature: str, names: tuple[str, ...]
) -> None:
    assert compat.parameters_of(signature) == names


class _OldGcs:
    """The call shape of Ray 2.50's GcsClient.drain_node (no timeout)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def drain_node(self, node_id: str, reason: int, message: str, deadline_ms: int) -> Any:
        self.calls.append((node_id, reason, message, deadline_ms))
        return (False, "node is not idle")


def test_drain_without_timeout_on_a_ray_that_takes_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        compat, "probe", lambda: compat.Support("2.50.0", drain_takes_timeout=False)
    )
    gcs = _OldGcs()

    accepted, rejection = compat.drain(gcs, "ab" * 28, "spot", 1_700_000_000_000, 10.0)

    assert (accepted, rejection) == (False, "node is not idle")
    ((node_id, _, message, deadline),) = gcs.calls
    assert (node_id, message, deadline) == ("ab" * 28, "spot", 1_700_000_000_000)


def test_draining_nodes_from_a_set_have_no_deadline() -> None:
    assert compat._deadlines({b"\x01\x02": 5, "0a": None}) == {"0102": 5, "0a": 0}
    assert compat._deadlines({"0b"}) == {"0b": 0}


def test_a_ray_older_than_the_range_is_refused_with_the_version_named() -> None:
    support = compat.Support("2.47.0", missing=("Ray older than 2.50.0",))

    with pytest.raises(compat.UnsupportedRay, match=r"Ray 2\.47\.0 .*older than 2\.50\.0"):
        support.require()


def test_the_installed_ray_is_supported_with_nothing_missing() -> None:
    support = compat.probe()

    assert support.supported, support.missing
    assert not support.missing


@pytest.mark.parametrize(
    ("version", "parsed"),
    [("2.60.0", (2, 60, 0)), ("2.9.3", (2, 9, 3)), ("3.0.0.dev0", (3, 0, 0)), ("dev", None)],
)
def test_versions_are_compared_as_numbers(version: str, parsed: Any) -> None:
    assert compat.parse_version(version) == parsed


def test_ci_runs_the_ray_side_tests_on_the_oldest_supported_ray() -> None:
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    (oldest,) = re.findall(r"^RAY_OLDEST \?= (\S+)$", makefile, flags=re.MULTILINE)

    assert compat.parse_version(oldest) == compat.MIN_RAY
