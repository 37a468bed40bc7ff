"""One typed settings object, read from the environment once at cold start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar


class SettingsError(ValueError):
    """The environment holds a value this service cannot run with."""


E = TypeVar("E", bound=StrEnum)


class RebalanceAction(StrEnum):
    REPLACE = "replace"
    DRAIN = "drain"
    IGNORE = "ignore"


class ReplacementMode(StrEnum):
    SPOT_FIRST = "spot-first"
    SPOT_ONLY = "spot-only"
    ON_DEMAND_FIRST = "on-demand-first"


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must lie between {low} and {high}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, enum: type[E], default: E) -> E:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return enum(raw)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise SettingsError(f"{name} must be one of {allowed}, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    ledger_table: str | None = None
    respond_document: str | None = None
    safety_margin_s: int = 15
    notice_window_s: int = 120
    command_timeout_s: int = 45
    max_receive_count: int = 5
    retry_delay_s: int = 5
    ledger_ttl_days: int = 90
    cluster_allowlist: frozenset[str] = field(default_factory=frozenset)
    rebalance_action: RebalanceAction = RebalanceAction.REPLACE
    replacement_mode: ReplacementMode = ReplacementMode.SPOT_FIRST
    pool_unavailable_minutes: int = 30
    dead_letter_queue_url: str | None = None
    account_id: str | None = None
    """The stack's account: notices from any other are rejected."""
    max_nodes_per_event: int = 20
    """Nodes one event may drain; the rest are recorded (a forged or runaway event)."""
    rearm_schedule_group: str | None = None
    """EventBridge Scheduler group for the deliveries that bring changes back near their start."""
    rearm_role_arn: str | None = None
    notice_queue_arn: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        allowlist = frozenset(
            name.strip() for name in env.get("CLUSTER_ALLOWLIST", "").split(",") if name.strip()
        )
        return cls(
            ledger_table=env.get("LEDGER_TABLE") or None,
            respond_document=env.get("RESPOND_DOCUMENT") or None,
            safety_margin_s=_int(env, "SAFETY_MARGIN_SECONDS", 15, 0, 90),
            command_timeout_s=_int(env, "COMMAND_TIMEOUT_SECONDS", 45, 5, 600),
            max_receive_count=_int(env, "MAX_RECEIVE_COUNT", 5, 1, 1000),
            retry_delay_s=_int(env, "RETRY_DELAY_SECONDS", 5, 0, 900),
            ledger_ttl_days=_int(env, "LEDGER_TTL_DAYS", 90, 1, 3650),
            cluster_allowlist=allowlist,
            rebalance_action=_choice(
                env, "REBALANCE_ACTION", RebalanceAction, RebalanceAction.REPLACE
            ),
            replacement_mode=_choice(
                env, "REPLACEMENT_MODE", ReplacementMode, ReplacementMode.SPOT_FIRST
            ),
            pool_unavailable_minutes=_int(env, "POOL_UNAVAILABLE_MINUTES", 30, 0, 1440),
            dead_letter_queue_url=env.get("DEAD_LETTER_QUEUE_URL") or None,
            account_id=env.get("STACK_ACCOUNT_ID") or None,
            max_nodes_per_event=_int(env, "MAX_NODES_PER_EVENT", 20, 1, 1000),
            rearm_schedule_group=env.get("REARM_SCHEDULE_GROUP") or None,
            rearm_role_arn=env.get("REARM_ROLE_ARN") or None,
            notice_queue_arn=env.get("NOTICE_QUEUE_ARN") or None,
        )

    def allows_cluster(self, cluster: str) -> bool:
        return not self.cluster_allowlist or cluster in self.cluster_allowlist
