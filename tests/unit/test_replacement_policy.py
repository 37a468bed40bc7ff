"""The replacement policy: which pool to ask for when a worker is interrupted (pure, no Ray)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ray_hooks.replacement import (
    ARM64,
    ON_DEMAND,
    ON_DEMAND_FIRST,
    SPOT,
    SPOT_ONLY,
    X86_64,
    Interrupted,
    InvalidReplacement,
    NodeType,
    NoReplacement,
    Pool,
    Replacement,
    ReplacementOptions,
    choose_replacement,
    node_types_from_config,
    parse_pool,
    parse_replacement_options,
)

BUNDLE_TEMPLATE = Path(__file__).resolve().parents[2] / "ray_hooks" / "bundle" / "cluster-spot.yaml"


def worker(
    name: str, market: str, arch: str, cpus: float = 8, zones: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A node type as the cluster bundle writes it: marker resource = type name, labels."""
    marker = "Graviton" if arch == ARM64 else "Intel"
    return {
        "resources": {"CPU": cpus, marker: 1, name: 1},
        "labels": {
            "ray.io/market-type": market,
            "ray.io/node-group": name,
            "spot-responder/arch": arch,
        },
        "node_config": {"Placement": {"AvailabilityZone": ",".join(zones)}} if zones else {},
        "min_workers": 0,
        "max_workers": 8,
    }


def cluster(**extra_types: dict[str, Any]) -> dict[str, NodeType]:
    config = {
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "max_workers": 0},
            "x86_spot_worker": worker("x86_spot_worker", SPOT, X86_64),
            "arm_spot_worker": worker("arm_spot_worker", SPOT, ARM64),
            "x86_ondemand_worker": worker("x86_ondemand_worker", ON_DEMAND, X86_64),
            "arm_ondemand_worker": worker("arm_ondemand_worker", ON_DEMAND, ARM64),
            **extra_types,
        },
    }
    return node_types_from_config(config)


def chosen(choice: object) -> Replacement:
    assert isinstance(choice, Replacement), choice
    return choice


# ---------------------------------------------------------------- spot-first (the default)


def test_spot_first_takes_another_spot_pool_of_the_same_arch_and_size() -> None:
    types = cluster(x86_spot_worker_b=worker("x86_spot_worker_b", SPOT, X86_64))

    choice = chosen(choose_replacement(Interrupted("x86_spot_worker", "us-west-2a"), types))

    assert (choice.node_type, choice.market) == ("x86_spot_worker_b", SPOT)
    assert "x86_spot_worker@us-west-2a interrupted" in choice.reason


def test_spot_first_falls_back_to_on_demand_of_the_same_arch_when_no_other_spot_pool_exists() -> (
    None
):
    choice = chosen(choose_replacement(Interrupted("arm_spot_worker", "us-west-2a"), cluster()))

    assert (choice.node_type, choice.market) == ("arm_ondemand_worker", ON_DEMAND)
    assert "skipped arm_spot_worker" in choice.reason


def test_never_crosses_architecture_even_when_a_spot_pool_of_the_other_arch_is_healthy() -> None:
    choice = chosen(choose_replacement(Interrupted("x86_spot_worker"), cluster()))

    assert choice.node_type == "x86_ondemand_worker"


def test_a_spot_pool_of_another_size_is_not_the_same_shape() -> None:
    types = cluster(x86_spot_big=worker("x86_spot_big", SPOT, X86_64, cpus=32))

    choice = chosen(choose_replacement(Interrupted("x86_spot_worker"), types))

    assert choice.node_type == "x86_ondemand_worker"


def test_a_recently_interrupted_spot_pool_is_skipped_for_on_demand() -> None:
    types = cluster(x86_spot_worker_b=worker("x86_spot_worker_b", SPOT, X86_64))

    choice = chosen(
        choose_replacement(
            Interrupted("x86_spot_worker", "us-west-2a"),
            types,
            unavailable=[parse_pool("x86_spot_worker_b@-")],
        )
    )

    assert choice.node_type == "x86_ondemand_worker"
    assert "x86_spot_worker_b (unavailable in every zone)" in choice.reason


def test_same_type_in_another_configured_zone_is_chosen_when_it_is_the_only_spot_pool_left() -> (
    None
):
    zones = ("us-west-2a", "us-west-2b")
    types = cluster(x86_spot_worker=worker("x86_spot_worker", SPOT, X86_64, zones=zones))

    choice = chosen(choose_replacement(Interrupted("x86_spot_worker", "us-west-2a"), types))

    assert (choice.node_type, choice.market) == ("x86_spot_worker", SPOT)
    assert "may launch in us-west-2b" in choice.reason


def test_same_type_without_a_zone_list_is_not_retried_after_an_interruption() -> None:
    choice = chosen(choose_replacement(Interrupted("x86_spot_worker", "us-west-2a"), cluster()))

    assert choice.market == ON_DEMAND
    assert "its zones are not in the config" in choice.reason


def test_a_pool_interrupted_in_one_zone_stays_usable_in_its_other_zone() -> None:
    zones = ("us-west-2a", "us-west-2b")
    types = cluster(x86_spot_worker_b=worker("x86_spot_worker_b", SPOT, X86_64, zones=zones))

    choice = chosen(
        choose_replacement(
            Interrupted("x86_spot_worker", "us-west-2c"),
            types,
            unavailable=[Pool("x86_spot_worker_b", "us-west-2a")],
        )
    )

    assert choice.node_type == "x86_spot_worker_b"
    assert "may launch in us-west-2b" in choice.reason


# ---------------------------------------------------------------- the other modes


def test_spot_only_answers_no_replacement_when_every_spot_pool_is_out() -> None:
    choice = choose_replacement(Interrupted("x86_spot_worker"), cluster(), mode=SPOT_ONLY)

    assert isinstance(choice, NoReplacement)
    assert "no healthy spot pool of the same shape (x86_64, 8 CPU)" in choice.reason


def test_on_demand_first_prefers_on_demand_even_with_a_healthy_spot_pool() -> None:
    types = cluster(x86_spot_worker_b=worker("x86_spot_worker_b", SPOT, X86_64))

    choice = chosen(choose_replacement(Interrupted("x86_spot_worker"), types, mode=ON_DEMAND_FIRST))

    assert (choice.node_type, choice.market) == ("x86_ondemand_worker", ON_DEMAND)


def test_on_demand_first_falls_back_to_spot_when_on_demand_is_unavailable() -> None:
    types = cluster(x86_spot_worker_b=worker("x86_spot_worker_b", SPOT, X86_64))

    choice = chosen(
        choose_replacement(
            Interrupted("x86_spot_worker"),
            types,
            unavailable=[Pool("x86_ondemand_worker")],
            mode=ON_DEMAND_FIRST,
        )
    )

    assert choice.node_type == "x86_spot_worker_b"


def test_everything_unavailable_means_no_replacement_with_every_skip_named() -> None:
    choice = choose_replacement(
        Interrupted("arm_spot_worker"), cluster(), unavailable=[Pool("arm_ondemand_worker")]
    )

    assert isinstance(choice, NoReplacement)
    assert "arm_spot_worker (unavailable in every zone)" in choice.reason
    assert "arm_ondemand_worker (unavailable in every zone)" in choice.reason


# ---------------------------------------------------------------- nothing to replace


@pytest.mark.parametrize(
    ("interrupted", "reason"),
    [
        (Interrupted(None), "type is unknown"),
        (Interrupted("gpu_worker"), "not in the cluster config"),
        (Interrupted("ray.head.default"), "head node is never replaced"),
    ],
)
def test_no_replacement_for_an_unknown_type_or_the_head(
    interrupted: Interrupted, reason: str
) -> None:
    choice = choose_replacement(interrupted, cluster())

    assert isinstance(choice, NoReplacement)
    assert reason in choice.reason


def test_a_type_with_max_workers_zero_is_never_a_candidate() -> None:
    disabled = worker("x86_spot_worker_b", SPOT, X86_64) | {"max_workers": 0}

    choice = chosen(
        choose_replacement(Interrupted("x86_spot_worker"), cluster(x86_spot_worker_b=disabled))
    )

    assert choice.node_type == "x86_ondemand_worker"


# ---------------------------------------------------------------- what is asked of the autoscaler


def test_the_bundle_is_one_whole_node_plus_the_marker_only_that_type_has() -> None:
    choice = chosen(choose_replacement(Interrupted("arm_spot_worker"), cluster()))

    # Graviton is shared by both arm types: it steers nothing, so it is left out.
    assert choice.bundle == {"CPU": 8.0, "arm_ondemand_worker": 1.0}
    assert choice.label_selector == {
        "ray.io/market-type": "on-demand",
        "ray.io/node-group": "arm_ondemand_worker",
    }
    assert choice.steered_by == "resource+labels"


def test_a_type_without_marker_or_labels_is_asked_by_shape_only_and_says_so() -> None:
    config = {
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "max_workers": 0},
            "spot_a": {
                "resources": {"CPU": 4},
                "node_config": {
                    "InstanceType": "m7i.xlarge",
                    "InstanceMarketOptions": {"MarketType": "spot"},
                },
                "max_workers": 2,
            },
            "ondemand_a": {
                "resources": {"CPU": 4},
                "node_config": {"InstanceType": "m7i.xlarge"},
                "max_workers": 2,
            },
        },
    }

    choice = chosen(choose_replacement(Interrupted("spot_a"), node_types_from_config(config)))

    assert (choice.node_type, choice.bundle, choice.label_selector) == (
        "ondemand_a",
        {"CPU": 4.0},
        {},
    )
    assert choice.steered_by == "shape-only"


# ---------------------------------------------------------------- reading the cluster config


def test_market_arch_and_zones_are_read_from_labels_node_config_and_instance_type() -> None:
    config = {
        "provider": {"type": "aws", "availability_zone": "us-west-2a,us-west-2b"},
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "node_config": {"InstanceType": "m7i.large"}},
            "graviton_spot": {
                "resources": {"CPU": 8},
                "node_config": {
                    "InstanceType": "r8gd.2xlarge",
                    "InstanceMarketOptions": {"MarketType": "spot"},
                },
                "max_workers": 4,
            },
            "pinned": {
                "resources": {"CPU": 8},
                "labels": {"ray.io/availability-zone": "us-west-2c"},
                "node_config": {"InstanceType": "c7i.2xlarge"},
            },
        },
    }

    types = node_types_from_config(config)

    assert types["head"].is_head
    assert (types["graviton_spot"].market, types["graviton_spot"].arch) == (SPOT, ARM64)
    assert types["graviton_spot"].zones == ("us-west-2a", "us-west-2b")
    assert (types["pinned"].market, types["pinned"].arch, types["pinned"].zones) == (
        ON_DEMAND,
        X86_64,
        ("us-west-2c",),
    )


def test_the_shipped_cluster_bundle_replaces_each_spot_type_with_its_on_demand_twin() -> None:
    # GIVEN the bundle's node types, CPU filled in as `ray up` does on the head
    config = yaml.safe_load(re.sub(r"\$\{[A-Z0-9_]+\}", "1", BUNDLE_TEMPLATE.read_text()))
    for spec in config["available_node_types"].values():
        spec["resources"].setdefault("CPU", 8)
    types = node_types_from_config(config)

    # WHEN each spot type is interrupted THEN its on-demand twin is asked for, by marker and labels
    for spot, twin in (
        ("x86_spot_worker", "x86_ondemand_worker"),
        ("arm_spot_worker", "arm_ondemand_worker"),
    ):
        choice = chosen(choose_replacement(Interrupted(spot, "us-west-2a"), types))
        assert (choice.node_type, choice.steered_by) == (twin, "resource+labels")
        assert choice.bundle == {"CPU": 8.0, twin: 1.0}


# ---------------------------------------------------------------- a notice's `replacement` object


def test_replacement_options_parse_mode_and_pools_with_unknown_zone_as_whole_type() -> None:
    options = parse_replacement_options(
        {
            "mode": "spot-only",
            "unavailable_pools": ["x86_spot_worker@us-west-2a", "arm_spot_worker@-"],
        }
    )

    assert options == ReplacementOptions(
        "spot-only", (Pool("x86_spot_worker", "us-west-2a"), Pool("arm_spot_worker"))
    )
    assert options.to_json()["unavailable_pools"] == [
        "x86_spot_worker@us-west-2a",
        "arm_spot_worker@-",
    ]


def test_replacement_null_means_no_replacement_and_defaults_are_spot_first() -> None:
    assert parse_replacement_options(None) is None
    assert parse_replacement_options({}) == ReplacementOptions()


@pytest.mark.parametrize(
    "value",
    [
        "spot-first",
        {"mode": "cheapest"},
        {"unavailable_pools": "x86_spot_worker@us-west-2a"},
        {"unavailable_pools": ["bad type@us-west-2a"]},
        {"unavailable_pools": ["x86_spot_worker@US West"]},
        {"unavailable_pools": ["x@-"] * 201},
    ],
)
def test_a_malformed_replacement_object_is_an_invalid_request(value: object) -> None:
    with pytest.raises(InvalidReplacement):
        parse_replacement_options(value)
