"""Configuration is read once, typed, and refuses values it cannot run with."""

import pytest

from spot_responder.settings import RebalanceAction, Settings, SettingsError


def test_defaults_without_environment():
    settings = Settings.from_env({})

    assert settings.safety_margin_s == 15
    assert settings.rebalance_action is RebalanceAction.REPLACE
    assert settings.allows_cluster("anything")


def test_values_come_from_the_environment():
    settings = Settings.from_env(
        {"SAFETY_MARGIN_SECONDS": "30", "CLUSTER_ALLOWLIST": "a, b", "REBALANCE_ACTION": "drain"}
    )

    assert settings.safety_margin_s == 30
    assert settings.allows_cluster("b")
    assert not settings.allows_cluster("c")
    assert settings.rebalance_action is RebalanceAction.DRAIN


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"SAFETY_MARGIN_SECONDS": "ten"}, "whole number"),
        ({"SAFETY_MARGIN_SECONDS": "500"}, "between"),
        ({"REBALANCE_ACTION": "explode"}, "one of replace, drain, ignore"),
    ],
)
def test_bad_value_is_refused_with_the_variable_named(env, says):
    with pytest.raises(SettingsError, match=says):
        Settings.from_env(env)
