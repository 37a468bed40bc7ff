"""Keeping the responder's request alive beside Ray's own `AutoscalingCoordinator`.

Once Ray Data (or Ray Train v2) has run, a detached actor named ``AutoscalingCoordinator``
(namespace ``AutoscalingCoordinator``, ``ray/data/_internal/cluster_autoscaler/
default_autoscaling_coordinator.py``) owns the cluster's resource request: every 20 s
(``TICK_INTERVAL_S``) it sends the concatenation of its requesters' bundles through
``ray.autoscaler.sdk.request_resources``, which replaces whatever request was in place,
the responder's included. The responder then registers as one more requester
(``request_resources(requester_id, resources, expire_after_s, label_selectors=...)``): the
coordinator sends the merged request at once and on every tick after, until the
registration expires (the capacity request's TTL) or an empty demand clears it.

What is registered is the **marker** part of each bundle only (``{x86_spot_worker_2: 1}``,
a resource only that node type has, see ``ray_hooks.replacement.steering``), not its CPUs:

- the coordinator concatenates requests, and the autoscaler packs every bundle of a request
  at once, so a bundle of CPUs beside Ray Data's own CPU bundles would ask for those CPUs a
  second time and launch nodes nobody needs;
- the coordinator also *reserves* existing resources for its requesters by priority; CPU
  bundles of the responder's would take CPUs from Ray Data's reservation and slow the
  pipeline down. A marker resource is used by nothing but this steering.

A bundle of a type without a marker is registered whole (there is nothing else to steer by).

Ray-internal calls this rests on (checked on Ray 2.60; Ray 2.50 has no coordinator, and then
nothing here runs): the GCS's actor table (``GcsClient.async_get_all_actor_info``, read
through ``ray_hooks.compat.actor_table`` as the impact analysis reads it) to find the actor
without a driver; the
actor's ``request_resources`` method, a private API of Ray Data. The call needs a driver, so
it runs in a child process (``python -m ray_hooks.capacity.coordinator``), after the drain and
the direct request, waited for a few seconds at most.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from ray_hooks import compat

log = logging.getLogger(__name__)

ACTOR = ("AutoscalingCoordinator", "AutoscalingCoordinator")  # name, namespace
REQUESTER_ID = "spot-responder"
WAIT_S = 4.0  # what the respond command waits for the child; the child's calls: CALL_S
CALL_S = 20.0
_SHAPE = ("CPU", "GPU", "memory", "object_store_memory")


def registered_bundles(demand: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The demand as the coordinator gets it: each bundle's marker resources only, when it
    has any; its label selector kept."""
    items = []
    for item in demand:
        resources = dict(item["resources"])
        markers = {k: v for k, v in resources.items() if k not in _SHAPE}
        items.append(
            {"resources": markers or resources, "label_selector": dict(item["label_selector"])}
        )
    return items


def keep(gcs: Any, demand: Sequence[dict[str, Any]], *, ttl_s: float) -> str | None:
    """Register `demand` with the cluster's AutoscalingCoordinator, when one is alive.

    Returns what the caller should say (None when there is no coordinator). Never raises:
    the direct request has been sent either way.
    """
    try:
        if not compat.named_actor_alive(gcs, *ACTOR):
            return None
    except Exception as exc:  # an old Ray, a GCS that does not answer
        log.warning("cannot tell whether Ray's AutoscalingCoordinator runs: %s", exc)
        return None
    items = registered_bundles(demand)
    order = {
        "address": str(gcs.address),
        "requester_id": REQUESTER_ID,
        "items": items,
        "expire_after_s": ttl_s,
    }
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "ray_hooks.capacity.coordinator"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a registration still running outlives this command
            env={**os.environ, "RAY_LOG_TO_DRIVER": "0"},
        )
        out, _ = child.communicate(json.dumps(order).encode(), timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        return (
            f"registering with Ray's AutoscalingCoordinator (still under way after {WAIT_S:.0f} s)"
        )
    except OSError as exc:
        return f"could not register with Ray's AutoscalingCoordinator: {exc}"
    if child.returncode == 0:
        what = f"{len(items)} marker bundle(s)" if items else "its request withdrawn"
        return (
            f"registered with Ray's AutoscalingCoordinator as {REQUESTER_ID} ({what}): it sends "
            "them with Ray Data's/Train's own on every 20 s tick"
        )
    answer = out.decode(errors="replace").strip().splitlines()
    return "could not register with Ray's AutoscalingCoordinator: " + (
        answer[-1] if answer else f"exit {child.returncode}"
    )


def _register(order: dict[str, Any]) -> None:
    import ray

    ray.init(
        address=order["address"],
        namespace=REQUESTER_ID,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=False,
    )
    try:
        name, namespace = ACTOR
        actor = ray.get_actor(name, namespace=namespace)
        items = order["items"]
        if not items:
            ray.get(actor.cancel_request.remote(order["requester_id"]), timeout=CALL_S)
            return
        ray.get(
            actor.request_resources.remote(
                order["requester_id"],
                [item["resources"] for item in items],
                order["expire_after_s"],
                label_selectors=[item["label_selector"] for item in items],
            ),
            timeout=CALL_S,
        )
    finally:
        ray.shutdown()


def main() -> int:
    order = json.loads(sys.stdin.read())
    try:
        _register(order)
    except Exception as exc:  # the parent reports the last line
        print(f"{type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
