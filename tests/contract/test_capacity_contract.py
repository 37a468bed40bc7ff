"""Replacement capacity and `reconcile` in the contract: both sides read the shared examples,
and the head node's builders print exactly what the examples show."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ray_hooks.capacity import (
    CapacityRequest,
    HandledNotice,
    ReconcileRequest,
    ReconcileResult,
    notice_replacements,
    parse_reconcile_request,
    reconcile_response,
    replacements_for,
)
from ray_hooks.contract import InvalidRequest, parse_request
from ray_hooks.replacement import (
    Interrupted,
    choose_replacement,
    node_types_from_config,
    parse_replacement_options,
)
from spot_responder.contract import parse_response

HERE = Path(__file__).parent
BUNDLE = HERE.parents[1] / "ray_hooks" / "bundle" / "cluster-spot.yaml"
#: The zones of the example's drained nodes (what their ray.io/availability-zone label says).
EXAMPLE_ZONES = {"i-0a1b2c3d4e5f60001": "us-west-2a", "i-0a1b2c3d4e5f60002": "us-west-2b"}


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((HERE / name).read_text())
    return document


def bundle_node_types() -> Any:
    """The shipped cluster bundle's node types, 8 CPU per worker as `ray up` fills them in."""
    config = yaml.safe_load(re.sub(r"\$\{[A-Z0-9_]+\}", "1", BUNDLE.read_text()))
    for name, spec in config["available_node_types"].items():
        spec["resources"]["CPU"] = 0 if name == config["head_node_type"] else 8
    return node_types_from_config(config)


def test_replacement_request_is_a_valid_respond_request_with_options_per_notice() -> None:
    text = (HERE / "replacement.request.json").read_text()

    request = parse_request(text)
    options = notice_replacements(text)

    assert options is not None
    assert len(options) == len(request.notices)
    assert [o.to_json() if o else None for o in options] == [
        n["replacement"] for n in load("replacement.request.json")["notices"]
    ]


def test_a_request_without_replacement_objects_asks_for_no_capacity() -> None:
    assert notice_replacements((HERE / "drain-two-workers.request.json").read_text()) is None


def test_the_example_choices_are_what_the_policy_decides_for_the_shipped_bundle() -> None:
    types = bundle_node_types()
    request = load("replacement.request.json")
    response = load("replacement.response.json")

    for notice, capacity, result in zip(
        request["notices"], response["capacity_requests"], response["results"], strict=True
    ):
        options = parse_replacement_options(notice["replacement"])
        assert options is not None
        interrupted = Interrupted(
            result["node"]["node_group"], EXAMPLE_ZONES[notice["instance_id"]]
        )
        choice = choose_replacement(interrupted, types, options.unavailable_pools, options.mode)
        assert choice.reason == capacity["reason"]
        assert getattr(choice, "node_type", None) == capacity["node_type"]
        assert [dict(getattr(choice, "bundle", {}))] == (capacity["bundles"] or [{}])


@pytest.mark.parametrize("name", ["replacement.response.json", "reconcile.response.json"])
def test_every_capacity_request_in_the_examples_is_printed_back_exactly(name: str) -> None:
    example = load(name)
    entries = [
        *example.get("capacity_requests", []),
        *example.get("released", []),
        *example.get("outstanding", []),
    ]

    assert entries
    assert [CapacityRequest.from_json(entry).to_json() for entry in entries] == entries


def test_reconcile_example_is_exactly_what_the_builder_prints_for_its_values() -> None:
    example = load("reconcile.response.json")
    request = parse_reconcile_request((HERE / "reconcile.request.json").read_text())

    built = reconcile_response(
        request,
        ReconcileResult(
            released=tuple(CapacityRequest.from_json(r) for r in example["released"]),
            outstanding=tuple(CapacityRequest.from_json(r) for r in example["outstanding"]),
            unavailable_pools=tuple(example["unavailable_pools"]),
        ),
        example["ray_version"],
        example["timings"]["total_s"],
    )

    assert request == ReconcileRequest("ray-on-aws", "rec-0c1d2e3f4a5b")
    assert built == example


def test_the_lambda_reads_the_capacity_requests_of_a_response() -> None:
    example = load("replacement.response.json")

    response = parse_response(example)

    assert response.capacity_requests == tuple(example["capacity_requests"])
    assert set(response.results) == {r["notice_id"] for r in example["results"]}


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"version": 1, "operation": "respond", "cluster": "c", "request_id": "r"}, "reconcile"),
        ({"version": 2, "operation": "reconcile", "cluster": "c", "request_id": "r"}, "version"),
        ({"version": 1, "operation": "reconcile", "cluster": "", "request_id": "r"}, "cluster"),
        ({"version": 1, "operation": "reconcile", "cluster": "c"}, "request_id"),
        ([], "JSON object"),
    ],
)
def test_an_invalid_reconcile_request_is_refused(document: object, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        parse_reconcile_request(json.dumps(document))


def test_a_node_that_was_not_found_is_not_replaced_and_ray_is_not_asked() -> None:
    class NoGcs:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the GCS must not be used ({name})")

    options = parse_replacement_options({})

    (entry,) = replacements_for(
        NoGcs(),  # type: ignore[arg-type]
        [HandledNotice("n1", "i-0a1b2c3d4e5f60009", "node-not-found", options)],
    )

    assert (entry.status, entry.node_type) == ("no-replacement", None)
    assert entry.reason == "the node was not drained (outcome node-not-found)"
