"""What the responder registers with Ray Data's AutoscalingCoordinator: marker bundles only,
so that the coordinator's concatenated request asks for no CPUs twice and its reservations
take none of Ray Data's (ray_hooks/capacity/coordinator.py; the e2e test runs the real one)."""

from __future__ import annotations

from ray_hooks.capacity.coordinator import registered_bundles


def test_a_bundle_with_a_marker_is_registered_as_the_marker_alone():
    demand = [
        {"resources": {"CPU": 8.0, "x86_spot_worker_2": 1.0}, "label_selector": {"m": "spot"}},
        {"resources": {"CPU": 8.0, "GPU": 1.0, "gpu_pool": 1.0}, "label_selector": {}},
    ]
    assert registered_bundles(demand) == [
        {"resources": {"x86_spot_worker_2": 1.0}, "label_selector": {"m": "spot"}},
        {"resources": {"gpu_pool": 1.0}, "label_selector": {}},
    ]


def test_a_bundle_without_a_marker_is_registered_whole():
    # nothing else would steer the autoscaler to the type: the CPUs are the request
    demand = [{"resources": {"CPU": 2.0}, "label_selector": {"ray.io/node-group": "x86"}}]
    assert registered_bundles(demand) == demand


def test_an_empty_demand_registers_nothing():
    assert registered_bundles([]) == []
