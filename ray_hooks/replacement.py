"""Which replacement to ask for when a worker is interrupted: a pure policy, no Ray.

A *pool* is a worker node type in one availability zone (``x86_spot_worker@us-west-2a``;
``x86_spot_worker@-`` or a bare ``x86_spot_worker`` when the zone is unknown: the whole
type). A pool interrupted recently is *unavailable* for a while, the way Karpenter keeps
an "unavailable offerings" cache: asking the same pool again would likely bring a node
that is interrupted in turn.

The policy, for the interrupted node's type T (its market, architecture and size):

1. candidates are the worker types of T's architecture and size (CPU, GPU), never the
   head type, never a type with ``max_workers: 0``;
2. within a market, another type comes first; T itself only when it may launch in a
   zone that is not unavailable (the config lists its zones) - the autoscaler, not this
   policy, picks the subnet, so the zone is a hope, and the reason says so;
3. the mode orders the markets: ``spot-first`` (spot, then on-demand), ``spot-only``,
   ``on-demand-first``;
4. a candidate with any of its pools unavailable and no zone list to steer around it is
   skipped, and so is a type at its ``max_workers`` (``full``: the caller counts the
   cluster's nodes); when none is left the answer is :class:`NoReplacement`, with the
   reason.

The choice carries the request that steers the autoscaler to the type (see
``ray_hooks.capacity`` for what was measured): a bundle of the type's CPU/GPU plus the
custom resource only that type has, and a label selector on the labels the type
declares in the cluster config (``ray.io/market-type``, ``ray.io/node-group``,
``ray.io/availability-zone``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ray_hooks.contract import InvalidRequest

SPOT = "spot"
ON_DEMAND = "on-demand"
SPOT_FIRST = "spot-first"
SPOT_ONLY = "spot-only"
ON_DEMAND_FIRST = "on-demand-first"
MODES = (SPOT_FIRST, SPOT_ONLY, ON_DEMAND_FIRST)
_MARKET_ORDER = {
    SPOT_FIRST: (SPOT, ON_DEMAND),
    SPOT_ONLY: (SPOT,),
    ON_DEMAND_FIRST: (ON_DEMAND, SPOT),
}

MARKET_LABEL = "ray.io/market-type"
NODE_GROUP_LABEL = "ray.io/node-group"
ZONE_LABEL = "ray.io/availability-zone"
ARCH_LABEL = "spot-responder/arch"
#: Labels put into the selector when the node type declares them (the autoscaler v2 only
#: matches a selector against the labels a type declares in the config).
STEERING_LABELS = (MARKET_LABEL, NODE_GROUP_LABEL, ZONE_LABEL)
X86_64 = "x86_64"
ARM64 = "arm64"

MAX_UNAVAILABLE_POOLS = 200
_UNKNOWN_ZONE = "-"
_NODE_TYPE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_ZONE_NAME = re.compile(r"^[a-z0-9-]{1,40}$")
#: Resources that are not a node's shape (Ray fills them in; never put them in a bundle).
_NOT_SHAPE = frozenset({"memory", "object_store_memory"})
#: Graviton instance families: a1, and <letters><generation>g<options> (m7g, c6gn, r8gd, t4g).
_GRAVITON_INSTANCE = re.compile(r"^(a1|[a-z]+\d+g[a-z]*)\.")
#: The seed's per-architecture markers.
_ARCH_MARKERS = {"Graviton": ARM64, "Intel": X86_64}


class InvalidReplacement(InvalidRequest):
    """A notice's `replacement` object breaks the contract (one line for people; exit code 2)."""


# ---------------------------------------------------------------- node types


@dataclass(frozen=True)
class NodeType:
    """One entry of the cluster config's `available_node_types`, as the policy needs it."""

    name: str
    resources: Mapping[str, float]
    labels: Mapping[str, str] = field(default_factory=dict)
    market: str = ON_DEMAND
    arch: str | None = None
    zones: tuple[str, ...] = ()
    max_workers: int = 1
    is_head: bool = False

    @property
    def size(self) -> tuple[float, float] | None:
        """(CPU, GPU), or None when the config does not say the CPU count."""
        if "CPU" not in self.resources:
            return None
        return float(self.resources["CPU"]), float(self.resources.get("GPU", 0))

    def describe_shape(self) -> str:
        size = self.size
        cpus = "CPU unknown" if size is None else f"{size[0]:g} CPU"
        gpus = f", {size[1]:g} GPU" if size is not None and size[1] else ""
        return f"{self.arch or 'arch unknown'}, {cpus}{gpus}"


def node_types_from_config(config: Mapping[str, Any]) -> dict[str, NodeType]:
    """The node types of a `ray up` cluster config (as ~/ray_bootstrap_config.yaml holds it)."""
    types = config.get("available_node_types")
    if not isinstance(types, Mapping):
        raise ValueError("the cluster config has no available_node_types mapping")
    head = config.get("head_node_type")
    provider = config.get("provider")
    provider_zones = _zones_of(
        provider.get("availability_zone") if isinstance(provider, Mapping) else None
    )
    return {
        str(name): _node_type(str(name), spec, str(name) == head, provider_zones)
        for name, spec in types.items()
        if isinstance(spec, Mapping)
    }


def cluster_max_workers(config: Mapping[str, Any]) -> int | None:
    """The cluster config's top-level `max_workers` (None when it does not say)."""
    value = config.get("max_workers")
    return None if value is None else _count(value, default=0)


def _node_type(
    name: str, spec: Mapping[str, Any], is_head: bool, provider_zones: tuple[str, ...]
) -> NodeType:
    resources = {
        str(key): float(value)
        for key, value in (spec.get("resources") or {}).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    labels = {str(key): str(value) for key, value in (spec.get("labels") or {}).items()}
    node_config = spec.get("node_config") or {}
    return NodeType(
        name=name,
        resources=resources,
        labels=labels,
        market=_market(labels, node_config),
        arch=_arch(labels, resources, node_config),
        zones=_type_zones(labels, node_config) or provider_zones,
        max_workers=_count(spec.get("max_workers"), default=1),
        is_head=is_head,
    )


def _count(value: object, default: int) -> int:
    if value is None:
        return default
    try:
        return int(str(value))
    except ValueError:
        return default


def _market(labels: Mapping[str, str], node_config: Mapping[str, Any]) -> str:
    if labels.get(MARKET_LABEL) in (SPOT, ON_DEMAND):
        return labels[MARKET_LABEL]
    options = node_config.get("InstanceMarketOptions") or {}
    return SPOT if str(options.get("MarketType", "")).lower() == SPOT else ON_DEMAND


def _arch(
    labels: Mapping[str, str], resources: Mapping[str, float], node_config: Mapping[str, Any]
) -> str | None:
    if labels.get(ARCH_LABEL):
        return labels[ARCH_LABEL]
    for marker, arch in _ARCH_MARKERS.items():
        if marker in resources:
            return arch
    instance_type = str(node_config.get("InstanceType", ""))
    if not instance_type:
        return None
    return ARM64 if _GRAVITON_INSTANCE.match(instance_type) else X86_64


def _type_zones(labels: Mapping[str, str], node_config: Mapping[str, Any]) -> tuple[str, ...]:
    placement = node_config.get("Placement") or {}
    return _zones_of(placement.get("AvailabilityZone")) or _zones_of(labels.get(ZONE_LABEL))


def _zones_of(value: object) -> tuple[str, ...]:
    if not isinstance(value, str):
        return ()
    return tuple(zone.strip() for zone in value.split(",") if zone.strip())


# ---------------------------------------------------------------- pools


@dataclass(frozen=True, order=True)
class Pool:
    """A node type in one zone; `zone` None means every zone of the type."""

    node_type: str
    zone: str | None = None

    def __str__(self) -> str:
        return f"{self.node_type}@{self.zone or _UNKNOWN_ZONE}"


def parse_pool(text: str) -> Pool:
    """`type@zone`, `type@-` or `type` (the last two: the whole type)."""
    name, _, zone = text.strip().partition("@")
    if not _NODE_TYPE_NAME.fullmatch(name):
        raise InvalidReplacement(f"pool {text!r}: node type must be letters, digits, _ . -")
    if zone in ("", _UNKNOWN_ZONE):
        return Pool(name)
    if not _ZONE_NAME.fullmatch(zone):
        raise InvalidReplacement(f"pool {text!r}: zone must be like us-west-2a or '-'")
    return Pool(name, zone)


# ---------------------------------------------------------------- the request's options


@dataclass(frozen=True)
class ReplacementOptions:
    """A notice's `replacement` object: how to replace, and which pools to avoid."""

    mode: str = SPOT_FIRST
    unavailable_pools: tuple[Pool, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "unavailable_pools": [str(p) for p in self.unavailable_pools]}


def parse_replacement_options(
    value: object, where: str = "replacement"
) -> ReplacementOptions | None:
    """The `replacement` field of a notice: null/absent (no replacement) or an object."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidReplacement(f"{where} must be an object or null")
    mode = value.get("mode", SPOT_FIRST)
    if mode not in MODES:
        raise InvalidReplacement(f"{where}.mode must be one of {', '.join(MODES)}; got {mode!r}")
    pools = value.get("unavailable_pools") or []
    if not isinstance(pools, list) or not all(isinstance(p, str) for p in pools):
        raise InvalidReplacement(f"{where}.unavailable_pools must be a list of strings")
    if len(pools) > MAX_UNAVAILABLE_POOLS:
        raise InvalidReplacement(
            f"{where}.unavailable_pools holds more than {MAX_UNAVAILABLE_POOLS} pools"
        )
    return ReplacementOptions(str(mode), tuple(parse_pool(p) for p in pools))


# ---------------------------------------------------------------- the choice


@dataclass(frozen=True)
class Interrupted:
    """The interrupted node: its node type and zone as far as they are known."""

    node_type: str | None
    zone: str | None = None

    @property
    def pool(self) -> Pool | None:
        return None if self.node_type is None else Pool(self.node_type, self.zone)


@dataclass(frozen=True)
class Replacement:
    """Ask for one node of `node_type`: `bundle` with `label_selector` steers the autoscaler."""

    node_type: str
    market: str
    bundle: Mapping[str, float]
    label_selector: Mapping[str, str]
    #: "resource+labels", "resource", "labels" or "shape-only" (may land on another type)
    steered_by: str
    reason: str


@dataclass(frozen=True)
class NoReplacement:
    """Nothing to ask for, and why."""

    reason: str


Choice = Replacement | NoReplacement


def choose_replacement(
    interrupted: Interrupted,
    node_types: Mapping[str, NodeType],
    unavailable: Iterable[Pool] = (),
    mode: str = SPOT_FIRST,
    full: Mapping[str, str] | None = None,
) -> Choice:
    """The replacement for one interrupted node (see the module docstring for the rules).

    `full`: node types that may not grow (at their max_workers), each with the reason.
    """
    if mode not in MODES:
        raise ValueError(f"unknown replacement mode {mode!r}")
    if interrupted.node_type is None:
        return NoReplacement("the interrupted node's type is unknown (no ray.io/node-group)")
    current = node_types.get(interrupted.node_type)
    if current is None:
        return NoReplacement(f"node type {interrupted.node_type!r} is not in the cluster config")
    if current.is_head:
        return NoReplacement("the head node is never replaced")
    blocked = frozenset(unavailable) | {Pool(interrupted.node_type, interrupted.zone)}
    skipped: list[str] = []
    for market in _MARKET_ORDER[mode]:
        for candidate in _candidates(current, node_types, market):
            if full and candidate.name in full:
                skipped.append(f"{candidate.name} ({full[candidate.name]})")
                continue
            healthy, why = _pool_health(candidate, blocked)
            if healthy:
                return _replacement(candidate, node_types, interrupted, mode, why, skipped)
            skipped.append(f"{candidate.name} ({why})")
    return NoReplacement(_nothing_left(current, interrupted, mode, skipped))


def _candidates(
    current: NodeType, node_types: Mapping[str, NodeType], market: str
) -> list[NodeType]:
    """Worker types of the market with the interrupted type's arch and size; others first."""
    same_shape = [
        candidate
        for candidate in node_types.values()
        if candidate.market == market
        and not candidate.is_head
        and candidate.max_workers > 0
        and candidate.arch == current.arch
        and (candidate.size is None or current.size is None or candidate.size == current.size)
    ]
    return sorted(
        same_shape, key=lambda candidate: (candidate.name == current.name, candidate.name)
    )


def _pool_health(candidate: NodeType, blocked: frozenset[Pool]) -> tuple[bool, str]:
    """Whether the type has a pool that is not unavailable, and a few words on why."""
    if Pool(candidate.name) in blocked:
        return False, "unavailable in every zone"
    blocked_zones = {p.zone for p in blocked if p.node_type == candidate.name}
    if not blocked_zones:
        return True, "no recent interruption"
    if not candidate.zones:
        zones = ", ".join(sorted(str(z) for z in blocked_zones))
        return False, f"interrupted recently in {zones}; its zones are not in the config"
    free = [zone for zone in candidate.zones if zone not in blocked_zones]
    if not free:
        return False, "unavailable in all its zones"
    hope = "the autoscaler picks the subnet; it may land in an interrupted zone"
    return True, f"may launch in {', '.join(free)} ({hope})"


def _replacement(
    chosen: NodeType,
    node_types: Mapping[str, NodeType],
    interrupted: Interrupted,
    mode: str,
    health: str,
    skipped: list[str],
) -> Replacement:
    bundle, selector, steered_by = steering(chosen, node_types)
    what = f"{Pool(str(interrupted.node_type), interrupted.zone)} interrupted"
    reason = f"{what}; {chosen.name} ({chosen.market}, {chosen.describe_shape()}): {health}"
    if skipped:
        reason += f"; skipped {', '.join(skipped)}"
    return Replacement(
        node_type=chosen.name,
        market=chosen.market,
        bundle=bundle,
        label_selector=selector,
        steered_by=steered_by,
        reason=f"{reason}; mode {mode}",
    )


def steering(
    chosen: NodeType, node_types: Mapping[str, NodeType]
) -> tuple[dict[str, float], dict[str, str], str]:
    """The bundle and label selector that make the autoscaler launch a node of `chosen`.

    The bundle is one whole node of the type (its CPU and GPU), plus 1 of every custom
    resource no other type has (a marker such as `x86_spot_worker: 1`); the selector holds
    the steering labels the type declares. Without a marker and without labels the bundle
    is the shape only, and the autoscaler may pick another type that fits.
    """
    others = [t for t in node_types.values() if t.name != chosen.name]
    markers = {
        name: 1.0
        for name in chosen.resources
        if name not in _NOT_SHAPE
        and name not in ("CPU", "GPU")
        and not any(name in other.resources for other in others)
    }
    bundle = {name: chosen.resources[name] for name in ("CPU", "GPU") if chosen.resources.get(name)}
    bundle.update(markers)
    selector = {key: chosen.labels[key] for key in STEERING_LABELS if key in chosen.labels}
    steered_by = "+".join(
        part for part, present in (("resource", markers), ("labels", selector)) if present
    )
    if not bundle:  # no CPU count, no marker: one CPU at least, or the request is empty
        bundle = {"CPU": 1.0}
    return bundle, selector, steered_by or "shape-only"


def _nothing_left(
    current: NodeType, interrupted: Interrupted, mode: str, skipped: list[str]
) -> str:
    markets = " or ".join(_MARKET_ORDER[mode])
    where = f"{Pool(current.name, interrupted.zone)} interrupted"
    reason = f"{where}; no healthy {markets} pool of the same shape ({current.describe_shape()})"
    if skipped:
        reason += f"; skipped {', '.join(skipped)}"
    return f"{reason}; mode {mode}"
