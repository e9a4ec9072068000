"""A job's safety settings may only tighten the organization's policy."""

from __future__ import annotations

import pytest

from models.policy import org_policy, provider_defaults, tighten
from tunegate.errors import InvalidConfig
from tunegate.settings import Settings


def test_org_policy_overrides_provider_defaults() -> None:
    settings = Settings(gate_cap=0.2)
    policy = org_policy(settings, {"gate_cap": 0.1, "storage_quota_bytes": 10})
    assert policy["gate_cap"] == 0.1 and "storage_quota_bytes" not in policy
    assert provider_defaults(settings)["gate_cap"] == 0.2
    assert provider_defaults(Settings(gate_block_flagged_unmitigated=False))["block_unsafe_data"] is False


def test_org_policy_refuses_unknown_keys() -> None:
    with pytest.raises(InvalidConfig) as info:
        org_policy(Settings(), {"gate_cpa": 0.1})
    assert info.value.param == "policy.gate_cpa" and "unknown" in info.value.message


def test_every_knob_is_a_stage_config_field_of_the_same_name() -> None:
    """No renaming between the policy and the stages: each knob is a field of the config it steers."""
    import dataclasses

    from models.policy import DEFAULT_POLICY, KNOBS
    from worker.stages.gate import GateConfig
    from worker.stages.mitigate import MitigateConfig

    fields = {f.name: f.default for c in (MitigateConfig, GateConfig) for f in dataclasses.fields(c)}
    assert set(KNOBS) == set(DEFAULT_POLICY) and set(KNOBS) <= set(fields)
    assert {k: fields[k] for k in KNOBS} == DEFAULT_POLICY


@pytest.mark.parametrize(
    ("knob", "tighter", "looser"),
    [
        ("mitigation", "drop", "none"),
        ("mitigate_top_fraction", 0.5, 0.01),
        ("inject_safety_examples", True, False),
        ("block_unsafe_data", True, False),
        ("gate_delta", 0.0, 0.5),
        ("gate_cap", 0.05, 0.9),
    ],
)
def test_tighten_accepts_stricter_and_rejects_looser(knob: str, tighter: object, looser: object) -> None:
    base = org_policy(Settings(), None)
    assert tighten(base, {knob: tighter})[knob] == tighter
    assert tighten(base, {knob: base[knob]})[knob] == base[knob]
    with pytest.raises(InvalidConfig) as info:
        tighten(base, {knob: looser})
    assert info.value.param == f"safety.{knob}" and "loosen" in info.value.message


@pytest.mark.parametrize(
    "bad",
    [
        {"gate_cap": 2.0},
        {"gate_cap": "low"},
        {"mitigation": "burn"},
        {"inject_safety_examples": 1},
        {"mitigate_top_fraction": 0},
    ],
)
def test_tighten_rejects_invalid_values(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidConfig) as info:
        tighten(org_policy(Settings(), None), bad)
    assert info.value.param == f"safety.{next(iter(bad))}"
