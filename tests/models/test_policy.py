"""A job's safety settings may only tighten the organization's policy."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import pytest

from models.policy import (
    KNOBS,
    KnobSpec,
    Policy,
    check_requested,
    knob_table_markdown,
    org_policy,
    provider_defaults,
    tighten,
)
from tests.models.knobs import throwaway_knob
from tunegate.errors import InvalidConfig
from tunegate.settings import Settings

REPO = Path(__file__).resolve().parents[2]


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

    from models.policy import DEFAULT_POLICY
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


# --- the knob table: one declaration, everything derived ----------------------------------------------------


def test_the_policy_type_has_the_tables_knobs_and_types() -> None:
    """``Policy`` (for mypy) and the table cannot drift: same keys, a ranked knob's Literal its options."""
    hints = get_type_hints(Policy)
    assert list(hints) == list(KNOBS)
    for name, spec in KNOBS.items():
        hint = hints[name]
        if spec.kind == "rank":
            assert get_origin(hint) is Literal and get_args(hint) == spec.options, name
        else:
            assert (get_origin(hint) or hint) is spec.value_type, name


def test_the_readme_knob_table_is_the_generated_one() -> None:
    """README.md's knob table is ``knob_table_markdown()``; to regenerate it, print that and paste it."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if "models.policy.knob_table_markdown()" in line) + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    assert "\n".join(lines[start:end]) + "\n" == knob_table_markdown()


def test_a_knob_added_to_the_table_is_in_the_defaults_the_checks_and_the_docs_table() -> None:
    settings = Settings()
    with throwaway_knob() as knob:
        assert provider_defaults(settings)[knob.name] == 0.4
        base = org_policy(settings, None)
        assert base[knob.name] == 0.4 and org_policy(settings, {knob.name: 0.5})[knob.name] == 0.5
        assert tighten(base, {knob.name: 0.1})[knob.name] == 0.1
        with pytest.raises(InvalidConfig) as info:
            tighten(base, {knob.name: 0.6})
        assert info.value.param == f"safety.{knob.name}" and "would loosen" in info.value.message
        with pytest.raises(InvalidConfig) as info:
            check_requested({knob.name: 2}, param="policy")
        assert info.value.message == f"policy.{knob.name} must be within [0, 1], got 2"
        assert f"| `{knob.name}` | 0.4 | [0, 1], smaller is stricter | {knob.help} |" in knob_table_markdown()
    assert knob.name not in provider_defaults(settings)
    with pytest.raises(InvalidConfig, match="unknown safety setting"):
        tighten(org_policy(settings, None), {knob.name: 0.1})


def test_a_range_says_its_bounds() -> None:
    for knob, value, message in (
        ("mitigate_top_fraction", 0, "safety.mitigate_top_fraction must be within (0, 1], got 0"),
        ("gate_delta", 1.5, "safety.gate_delta must be within [0, 1], got 1.5"),
        ("gate_category_limits", {"fraud": -1}, "safety.gate_category_limits.fraud must be within [0, 1]"),
    ):
        with pytest.raises(InvalidConfig) as info:
            check_requested({knob: value})
        assert info.value.message.startswith(message), info.value.message


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"kind": "rank"}, "options are given exactly for kind 'rank'"),
        ({"kind": "lower", "options": ("a", "b")}, "options are given exactly for kind 'rank'"),
        ({"kind": "true", "setting": "no_such_setting"}, "no Settings field"),
        ({"kind": "true", "help": "a | b"}, "one line"),
    ],
)
def test_a_knob_declared_wrong_is_refused(fields: dict[str, object], why: str) -> None:
    kw: dict[str, object] = {"name": "k", "label": "k", "help": "k", **fields}
    with pytest.raises(ValueError, match=why):
        KnobSpec(**kw)  # type: ignore[arg-type]
