"""The user's Ray: what this Ray can do, found out at start-up, and thin adapters for every
Ray-internal call whose shape differs between Ray versions.

ray_hooks runs with the cluster's own Ray, not the one it was tested with. Nearly every call
it makes is internal to Ray, so `probe()` looks for each feature itself (versions alone lie)
and names what works, what is degraded and what is missing. The drain is the one part that
must work: without it the answer is `unsupported-ray`, naming the version and the feature.
The impact and the capacity request degrade on their own.

Every Ray-internal call ray_hooks relies on, and where it exists (read in the wheels of Ray
2.47.0 to 2.60.0, measured on real clusters: tests/ray_versions/README.md):

- `ray._raylet.GcsClient(address=)`; from 2.x a wrapper whose methods are those of
  `ray._raylet.InnerGcsClient` (compiled, with the signature in each method's docstring).
- `GcsClient.drain_node(node_id_hex, reason, reason_message, deadline_timestamp_ms)` ->
  `(accepted, rejection_message)`; a `timeout=` keyword only from 2.60.
- `autoscaler_pb2.DrainNodeReason.DRAIN_NODE_REASON_PREEMPTION`.
- The draining nodes with their deadlines: `GcsClient.get_draining_nodes(timeout=)` -> dict
  from 2.60; before it only `ray._raylet.GlobalStateAccessor(GcsClientOptions.create(...))
  .get_draining_nodes()` (what `ray._private.state` uses), -> dict (a set in Ray 2.9).
- `GcsClient.get_all_node_info(timeout=)` -> `{NodeID: gcs_pb2.GcsNodeInfo}` with `labels`,
  `state`, `state_snapshot`, `death_info`, `instance_id`, `node_type_name`, `start_time_ms`.
- `GcsClient.async_get_all_actor_info(actor_state_name=, timeout=)`, with
  `ActorTableData.num_restarts_due_to_node_preemption`.
- `ray.util.state.list_tasks(..., raise_on_missing_output=)` (the dashboard's state API).
- Raw gRPC to raylets (`NodeManagerService.GetNodeStats`, `GetObjectsInfo`) and owners
  (`CoreWorkerService.GetObjectLocationsOwner`) over Ray's channel helper:
  `ray._private.grpc_utils.init_grpc_channel` (2.60: adds the token-auth interceptor), before
  it `ray._private.utils.init_grpc_channel`.
- Object-id layout (task id of 24 bytes + little-endian index; `ray.put` objects from index
  100,000,001): measured on every version listed above; a Ray outside them gets the
  objects' kinds as unknown, never guessed.
- Autoscaler v2: `GcsClient.request_cluster_resource_constraint(bundles, label_selectors,
  counts, timeout_s=)` from 2.60; `(bundles, counts, timeout_s=)` before it (no label
  selectors: a request then steers by the node type's marker resource only). v1: the
  internal KV key `autoscaler_resource_request`.
- Ray Data's/Train's `AutoscalingCoordinator` (in 2.60, not in 2.50): found without a
  driver in the same actor table (`ActorTableData.name`, `ray_namespace`); reached
  through a driver, see `ray_hooks.capacity.coordinator`.
- Token authentication: `ray._private.authentication.authentication_token_setup.
  maybe_enable_token_auth_if_token_available` (2.59+), what `ray start --head` and
  `ray.init()` on a local cluster call: with a token in `RAY_AUTH_TOKEN`,
  `RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token` (of the Ray user) the GCS client sends it.
  Ray 2.55 to 2.58 have token auth only by `RAY_AUTH_MODE=token` (not set under the SSM
  Agent), and no such function: there a token-auth cluster is not reached.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

#: The oldest Ray on which drain, impact and capacity were measured (tests/ray_versions/
#: README.md); older ones are refused, even where the probes pass: nothing there was measured.
MIN_RAY = (2, 50, 0)
#: The newest Ray measured; a newer one runs if the probes pass.
MAX_TESTED_RAY = (2, 60, 0)
#: Ray versions whose object-id layout was measured (see the module docstring).
OBJECT_ID_LAYOUT_RANGE = ((2, 50, 0), (2, 60, 0))

UNSUPPORTED_RAY = "unsupported-ray"
IMPACT = "impact"
OBJECTS = "objects"
CAPACITY = "capacity"


class UnsupportedRay(RuntimeError):
    """This Ray cannot be drained by ray_hooks: outcome `unsupported-ray`, never retried."""

    def __init__(self, ray_version: str, missing: tuple[str, ...]) -> None:
        self.ray_version = ray_version
        self.missing = missing
        super().__init__(
            f"Ray {ray_version} is not supported by ray_hooks "
            f"(supported: {supported_range()}): missing {'; '.join(missing)}"
        )


@dataclass(frozen=True)
class Support:
    """What works on this Ray: the drain's missing features refuse, the rest degrades."""

    ray_version: str
    #: Features the drain needs that this Ray lacks; any of them means `unsupported-ray`.
    missing: tuple[str, ...] = ()
    #: Part (impact, objects, capacity) -> why it is degraded on this Ray.
    degraded: Mapping[str, str] = field(default_factory=dict)
    drain_takes_timeout: bool = True
    draining_from_gcs_client: bool = True
    label_selectors: bool = True
    token_auth: bool = True

    @property
    def supported(self) -> bool:
        return not self.missing

    def require(self) -> None:
        """Raise UnsupportedRay unless the drain works on this Ray."""
        if self.missing:
            raise UnsupportedRay(self.ray_version, self.missing)

    def to_json(self) -> dict[str, object]:
        return {
            "ray_version": self.ray_version,
            "supported": self.supported,
            "supported_range": supported_range(),
            "missing": list(self.missing),
            "degraded": [
                {"part": part, "reason": reason} for part, reason in self.degraded.items()
            ],
        }


def unsupported_ray_document(exc: UnsupportedRay) -> dict[str, object]:
    """What is printed with exit code 4 (tests/contract/unsupported-ray.response.json)."""
    from ray_hooks.contract import CONTRACT_VERSION

    return {
        "version": CONTRACT_VERSION,
        "outcome": UNSUPPORTED_RAY,
        "error": " ".join(str(exc).split()),
        "ray_version": exc.ray_version,
        "missing": list(exc.missing),
        "supported_range": supported_range(),
    }


def supported_range() -> str:
    return f">={_dotted(MIN_RAY)} (tested up to {_dotted(MAX_TESTED_RAY)})"


@cache
def probe() -> Support:
    """Look for every Ray feature ray_hooks uses; import Ray once."""
    import ray

    version = str(ray.__version__)
    client = _gcs_client_class()
    drain_parameters = _parameters(client, "drain_node")
    from_client = _parameters(client, "get_draining_nodes") is not None
    constraint = _parameters(client, "request_cluster_resource_constraint") or ()
    support = Support(
        ray_version=version,
        missing=tuple(_drain_gaps(version, client, from_client)),
        degraded=_degraded(version, client, "label_selectors" in constraint),
        drain_takes_timeout=drain_parameters is not None and "timeout" in drain_parameters,
        draining_from_gcs_client=from_client,
        label_selectors="label_selectors" in constraint,
        token_auth=_token_setup() is not None,
    )
    if support.missing:
        log.error("Ray %s is not supported: missing %s", version, "; ".join(support.missing))
    for part, reason in support.degraded.items():
        log.warning("Ray %s: %s degraded: %s", version, part, reason)
    return support


def _drain_gaps(version: str, client: Any, draining_from_client: bool) -> list[str]:
    """What the drain (and finding the node to drain) needs and this Ray lacks."""
    missing = []
    parsed = parse_version(version)
    if parsed is not None and parsed < MIN_RAY:
        missing.append(f"Ray older than {_dotted(MIN_RAY)}, the oldest measured")
    if _parameters(client, "drain_node") is None:
        missing.append("GcsClient.drain_node")
    if not _has_preemption_reason():
        missing.append("DrainNodeReason.DRAIN_NODE_REASON_PREEMPTION")
    accessor = _raylet("GlobalStateAccessor")
    if not draining_from_client and _parameters(accessor, "get_draining_nodes") is None:
        missing.append("a listing of the draining nodes (GcsClient or GlobalStateAccessor)")
    if _parameters(client, "get_all_node_info") is None:
        missing.append("GcsClient.get_all_node_info")
    missing.extend(_missing_node_fields())
    return missing


def _degraded(version: str, client: Any, label_selectors: bool) -> dict[str, str]:
    degraded = {}
    impact = _impact_gaps(client)
    if impact:
        degraded[IMPACT] = impact
    objects = _objects_gap(parse_version(version))
    if objects:
        degraded[OBJECTS] = objects
    if not label_selectors:
        degraded[CAPACITY] = (
            f"Ray {version}'s autoscaler v2 takes no label selectors: replacements are "
            "steered by the node type's marker resource only"
        )
    return degraded


# ---------------------------------------------------------------- adapters


def drain(
    gcs: Any, node_id_hex: str, reason_message: str, deadline_ms: int, timeout: float
) -> tuple[bool, str]:
    """GCS DrainNode, reason PREEMPTION: (accepted, rejection message)."""
    reasons = importlib.import_module("ray.core.generated.autoscaler_pb2").DrainNodeReason
    reason = int(reasons.Value("DRAIN_NODE_REASON_PREEMPTION"))
    if probe().drain_takes_timeout:
        answer = gcs.drain_node(node_id_hex, reason, reason_message, deadline_ms, timeout=timeout)
    else:
        answer = gcs.drain_node(node_id_hex, reason, reason_message, deadline_ms)
    if isinstance(answer, tuple):
        accepted, rejection = (*answer, "")[:2]
        return bool(accepted), str(rejection or "")
    return bool(answer), ""


def draining_nodes(gcs: Any, timeout: float) -> dict[str, int]:
    """{node id hex: drain deadline in ms (0: none)} of the nodes the GCS is draining."""
    if probe().draining_from_gcs_client:
        return _deadlines(gcs.get_draining_nodes(timeout=timeout))
    return _deadlines(_state_accessor(gcs).get_draining_nodes())


def request_cluster_resources(gcs: Any, demand: Sequence[Mapping[str, Any]]) -> None:
    """Autoscaler v2's cluster constraint: [{"resources": {...}, "label_selector": {...}}].

    What `ray.autoscaler.v2.sdk.request_cluster_resources` does in 2.60 (it replaces the
    previous constraint), in the argument list of this Ray's GcsClient; selectors are
    dropped where this Ray takes none (Support.degraded says so).
    """
    with_selectors = probe().label_selectors
    grouped: Counter[tuple[frozenset[tuple[str, Any]], frozenset[tuple[str, Any]]]] = Counter(
        (
            frozenset(dict(item.get("resources") or {}).items()),
            frozenset(dict(item.get("label_selector") or {}).items() if with_selectors else ()),
        )
        for item in demand
    )
    bundles = [dict(resources) for resources, _ in grouped]
    counts = list(grouped.values())
    if with_selectors:
        selectors = [dict(selector) for _, selector in grouped]
        gcs.request_cluster_resource_constraint(bundles, selectors, counts, timeout_s=10)
    else:
        gcs.request_cluster_resource_constraint(bundles, counts, timeout_s=10)


def grpc_channel(address: str, options: list[tuple[str, Any]]) -> Any:
    """A gRPC channel made by Ray's own helper: TLS and token auth as this Ray sets them up."""
    for module in ("ray._private.grpc_utils", "ray._private.utils"):
        try:
            init_grpc_channel = importlib.import_module(module).init_grpc_channel
        except (ImportError, AttributeError):
            continue
        return init_grpc_channel(address, options=options)
    raise UnsupportedRay(probe().ray_version, ("init_grpc_channel",))


def enable_token_auth_if_token_available() -> bool:
    """Send the Ray user's token, when there is one, as `ray.init()` on a local cluster does.

    Without it, a GCS client made outside `ray start`/`ray.init` sends no token (RAY_AUTH_MODE
    is not set under the SSM Agent) and a cluster with token auth refuses every call. A Ray
    without token auth (before 2.59) has nothing to do.
    """
    setup = _token_setup()
    enable = getattr(setup, "maybe_enable_token_auth_if_token_available", None)
    if enable is None:  # before 2.59 token mode is only what RAY_AUTH_MODE says
        return False
    enabled = bool(enable(warn_if_disabled=False))
    log.debug("token authentication %s", "on" if enabled else "off (no token found)")
    return enabled


# ---------------------------------------------------------------- probes


def parse_version(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a Ray version string; None when it is not one (a dev build)."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def parameters_of(signature: str) -> tuple[str, ...]:
    """Parameter names of a compiled method's embedded signature "C.m(self, int a: int, b=1)"."""
    inside = signature[signature.find("(") + 1 : signature.rfind(")")]
    names = []
    for piece in _top_level_split(inside):
        declaration = re.split(r"[:=]", piece, maxsplit=1)[0].strip()
        if declaration:
            names.append(declaration.split()[-1].lstrip("*"))
    return tuple(name for name in names if name != "self")


def _top_level_split(text: str) -> list[str]:
    pieces: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def _parameters(owner: Any, name: str) -> tuple[str, ...] | None:
    """The parameters of `owner.name` (None when there is no such method)."""
    method = getattr(owner, name, None)
    if method is None:
        return None
    first_line = (getattr(method, "__doc__", None) or "").strip().splitlines()[:1]
    if first_line and f"{name}(" in first_line[0]:
        return parameters_of(first_line[0])
    import inspect

    try:
        return tuple(p for p in inspect.signature(method).parameters if p != "self")
    except (TypeError, ValueError):
        return ()


def _raylet(name: str) -> Any:
    return getattr(importlib.import_module("ray._raylet"), name, None)


def _gcs_client_class() -> Any:
    """The class that has GcsClient's methods (the wrapper delegates to InnerGcsClient)."""
    return _raylet("InnerGcsClient") or _raylet("GcsClient")


def _has_preemption_reason() -> bool:
    try:
        reasons = importlib.import_module("ray.core.generated.autoscaler_pb2").DrainNodeReason
        reasons.Value("DRAIN_NODE_REASON_PREEMPTION")
    except (ImportError, AttributeError, ValueError):
        return False
    return True


_NODE_FIELDS = (
    "node_id",
    "node_manager_address",
    "node_manager_port",
    "state",
    "is_head_node",
    "labels",
    "start_time_ms",
    "state_snapshot",
    "death_info",
)


def _missing_node_fields() -> list[str]:
    try:
        fields = importlib.import_module("ray.core.generated.gcs_pb2").GcsNodeInfo.DESCRIPTOR
    except (ImportError, AttributeError):
        return ["gcs_pb2.GcsNodeInfo"]
    return [f"GcsNodeInfo.{name}" for name in _NODE_FIELDS if name not in fields.fields_by_name]


def _impact_gaps(client: Any) -> str:
    gaps = []
    try:
        from ray.util.state import list_tasks
    except ImportError:
        gaps.append("ray.util.state.list_tasks")
    else:
        import inspect

        if "raise_on_missing_output" not in inspect.signature(list_tasks).parameters:
            gaps.append("list_tasks(raise_on_missing_output=)")
    actor_info = _parameters(client, "async_get_all_actor_info")
    if actor_info is None or "actor_state_name" not in actor_info:
        gaps.append("GcsClient.async_get_all_actor_info(actor_state_name=)")
    try:
        actor = importlib.import_module("ray.core.generated.gcs_pb2").ActorTableData.DESCRIPTOR
        if "num_restarts_due_to_node_preemption" not in actor.fields_by_name:
            gaps.append("ActorTableData.num_restarts_due_to_node_preemption")
    except (ImportError, AttributeError):
        gaps.append("gcs_pb2.ActorTableData")
    if not gaps:
        return ""
    return f"Ray {_ray_version()} lacks " + ", ".join(gaps)


def _objects_gap(version: tuple[int, int, int] | None) -> str:
    oldest, newest = OBJECT_ID_LAYOUT_RANGE
    if version is None or not oldest <= (*version[:2], 0) <= newest:
        return (
            "object-id layout not measured on this Ray "
            f"({_dotted(oldest)} to {_dotted(newest)} are): object kinds are unknown"
        )
    for module, attribute in (
        ("node_manager_pb2", "GetObjectsInfoRequest"),
        ("core_worker_pb2", "GetObjectLocationsOwnerRequest"),
    ):
        try:
            getattr(importlib.import_module(f"ray.core.generated.{module}"), attribute)
        except (ImportError, AttributeError):
            return f"objects on the node unknown: this Ray lacks {module}.{attribute}"
    return ""


def _token_setup() -> Any:
    try:
        return importlib.import_module("ray._private.authentication.authentication_token_setup")
    except ImportError:
        return None


_accessors: dict[str, Any] = {}


def _state_accessor(gcs: Any) -> Any:
    """Ray's GlobalStateAccessor for the GCS (what ray._private.state uses), one per address."""
    address = str(gcs.address)
    if address not in _accessors:
        options = _raylet("GcsClientOptions").create(
            address, gcs.cluster_id.hex(), allow_cluster_id_nil=False, fetch_cluster_id_if_nil=False
        )
        accessor = _raylet("GlobalStateAccessor")(options)
        accessor.connect()
        _accessors[address] = accessor
    return _accessors[address]


def actor_table(gcs: Any, timeout: float, state: str | None = None) -> Mapping[Any, Any]:
    """The GCS's actors, {ActorID: ActorTableData}, all or those in `state` (e.g. "ALIVE")."""

    async def table() -> Any:  # the call must start inside the loop
        return await asyncio.wait_for(
            gcs.async_get_all_actor_info(actor_state_name=state, timeout=timeout), timeout + 1
        )

    found: Mapping[Any, Any] = asyncio.run(table())
    return found


def named_actor_alive(gcs: Any, name: str, namespace: str, timeout: float = 5.0) -> bool:
    """Whether an actor of that name and namespace is alive (no driver needed)."""
    actors = actor_table(gcs, timeout, "ALIVE").values()
    return any(a.name == name and a.ray_namespace == namespace for a in actors)


def _deadlines(answer: Any) -> dict[str, int]:
    if isinstance(answer, Mapping):
        return {_hex(node): int(deadline or 0) for node, deadline in answer.items()}
    return {_hex(node): 0 for node in answer}  # Ray 2.9: a set, without deadlines


def _hex(node: Any) -> str:
    if isinstance(node, bytes):
        return node.hex()
    hexed = getattr(node, "hex", None)
    return str(hexed()) if callable(hexed) else str(node)


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


def _dotted(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)
