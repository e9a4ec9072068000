"""A job's safety settings may only tighten the organization's policy."""

from __future__ import annotations

import pytest

from models.policy import org_policy, provider_defaults, tighten
from tunegate.errors import InvalidConfig
from tunegate.settings import Settings


def test_org_policy_overrides_provider_defaults() -> None:
    settings = Settings(gate_delta=0.04)
    policy = org_policy(settings, {"gate_delta": 0.02, "storage_quota_bytes": 10})
    assert policy["gate_delta"] == 0.02 and "storage_quota_bytes" not in policy
    assert provider_defaults(settings)["gate_delta"] == 0.04
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
    from worker.stages.repair import RepairStageConfig

    defaults = [MitigateConfig(), GateConfig(), RepairStageConfig()]
    fields = {f.name: getattr(c, f.name) for c in defaults for f in dataclasses.fields(c)}
    assert set(KNOBS) == set(DEFAULT_POLICY) and set(KNOBS) <= set(fields)
    assert {k: fields[k] for k in KNOBS} == DEFAULT_POLICY


@pytest.mark.parametrize(
    ("knob", "tighter", "looser"),
    [
        ("mitigation", "drop", "none"),
        ("mitigate_top_fraction", 0.5, 0.01),
        ("max_repair_share", 0.1, 0.5),
        ("inject_safety_examples", True, False),
        ("block_unsafe_data", True, False),
        ("gate_delta", 0.0, 0.5),
        ("over_refusal_delta", 0.05, 0.2),
        ("repair_on", "never", "always"),
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
        {"gate_delta": 2.0},
        {"gate_delta": "low"},
        {"over_refusal_action": "ignore"},
        {"gate_category_limits": {"cybercrime": 1.5}},
        {"gate_category_limits": {"no_such_category": 0.1}},
        {"gate_category_limits": 0.1},
        {"mitigation": "burn"},
        {"inject_safety_examples": 1},
        {"mitigate_top_fraction": 0},
        {"max_repair_share": 1.5},
        {"max_repair_share": -0.1},
    ],
)
def test_tighten_rejects_invalid_values(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidConfig) as info:
        tighten(org_policy(Settings(), None), bad)
    assert info.value.param.startswith(f"safety.{next(iter(bad))}")


def test_removed_gate_cap_is_refused_saying_it_was_removed() -> None:
    """An org policy or a job that still sends gate_cap gets an error naming it and what replaced it."""
    for call, param in (
        (lambda: org_policy(Settings(), {"gate_cap": 0.1}), "policy.gate_cap"),
        (lambda: tighten(org_policy(Settings(), None), {"gate_cap": 0.1}), "safety.gate_cap"),
    ):
        with pytest.raises(InvalidConfig) as info:
            call()
        assert info.value.param == param and "was removed" in info.value.message
        assert "gate_delta" in info.value.message


def test_category_limits_tighten_by_adding_or_lowering_never_by_dropping() -> None:
    base = org_policy(Settings(), {"gate_category_limits": {"cybercrime": 0.05}})
    assert tighten(base, {"gate_category_limits": {"cybercrime": 0.02, "weapons": 0.03}})[
        "gate_category_limits"
    ] == {"cybercrime": 0.02, "weapons": 0.03}
    for looser in ({"cybercrime": 0.1}, {"weapons": 0.01}, {}):
        with pytest.raises(InvalidConfig) as info:
            tighten(base, {"gate_category_limits": looser})
        assert info.value.param == "safety.gate_category_limits" and "loosen" in info.value.message


def test_over_refusal_action_fail_is_stricter_than_warn() -> None:
    base = org_policy(Settings(), None)
    assert (
        base["over_refusal_action"] == "warn"
        and tighten(base, {"over_refusal_action": "fail"})["over_refusal_action"] == "fail"
    )
    strict = org_policy(Settings(), {"over_refusal_action": "fail"})
    with pytest.raises(InvalidConfig) as info:
        tighten(strict, {"over_refusal_action": "warn"})
    assert info.value.param == "safety.over_refusal_action" and "loosen" in info.value.message
