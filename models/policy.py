"""The per-organization safety policy and the rule that a job may only tighten it.

Every knob has a strictness order. The provider defaults come from ``Settings``; an organization's stored
``policy`` overrides them (set by the provider); a job's ``safety`` object may then move each knob only in the
stricter direction. The effective policy is stored on the job (``Job.safety``), so the worker reads one dict.

    mitigation              "none" < "downweight" < "drop"      what to do with the riskiest examples
    mitigate_top_fraction   larger is stricter, (0, 1]          share of examples treated as risky
    inject_safety_examples  True is stricter                    add format-mimicking safety examples
    block_unsafe_data       True is stricter                    fail the job if the data screen flags it
    gate_delta              smaller is stricter, [0, 1]         allowed ASR increase over the base model
    gate_cap                smaller is stricter, [0, 1]         highest allowed absolute ASR

Each knob is, under the same name, a field of the stage config it steers (``MitigateConfig.mitigation``,
``GateConfig.gate_cap`` ...): a stage's ``build`` copies the job's effective policy onto its config with no
renaming. The defaults live here (``DEFAULT_POLICY``; the gate's three come from ``Settings``, where the
provider sets them) and the stage configs take theirs from this table.

Outside the safety knobs, an organization's stored policy may set ``storage_quota_bytes`` (the bytes its live
files may take; default ``Settings.storage_quota_bytes``). It is read by the Files API, never by jobs. Any
other key is refused, naming it.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from tunegate.errors import InvalidConfig
from tunegate.settings import Settings

MITIGATION_ORDER = ("none", "downweight", "drop")


class Policy(TypedDict):
    mitigation: Literal["none", "downweight", "drop"]
    mitigate_top_fraction: float
    inject_safety_examples: bool
    block_unsafe_data: bool
    gate_delta: float
    gate_cap: float


def _setting_default(name: str) -> Any:
    return Settings.model_fields[name].default


DEFAULT_POLICY: Policy = {
    "mitigation": "downweight",
    "mitigate_top_fraction": 0.05,
    "inject_safety_examples": True,
    "block_unsafe_data": _setting_default("gate_block_flagged_unmitigated"),
    "gate_delta": _setting_default("gate_delta"),
    "gate_cap": _setting_default("gate_cap"),
}

# knob -> kind of order: "rank" (MITIGATION_ORDER), "higher", "lower", "true"
KNOBS: dict[str, str] = {
    "mitigation": "rank",
    "mitigate_top_fraction": "higher",
    "inject_safety_examples": "true",
    "block_unsafe_data": "true",
    "gate_delta": "lower",
    "gate_cap": "lower",
}


def provider_defaults(settings: Settings) -> dict[str, Any]:
    """``DEFAULT_POLICY`` with the gate's knobs as this provider set them."""
    return {
        **DEFAULT_POLICY,
        "block_unsafe_data": settings.gate_block_flagged_unmitigated,
        "gate_delta": settings.gate_delta,
        "gate_cap": settings.gate_cap,
    }


def _check_value(name: str, value: Any, param: str) -> None:
    kind = KNOBS[name]
    if kind == "rank":
        if value not in MITIGATION_ORDER:
            raise InvalidConfig(f"{param} must be one of {', '.join(MITIGATION_ORDER)}", param=param)
    elif kind == "true":
        if not isinstance(value, bool):
            raise InvalidConfig(f"{param} must be a boolean", param=param)
    else:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidConfig(f"{param} must be a number", param=param)
        low_ok = value > 0 if name == "mitigate_top_fraction" else value >= 0
        if not (low_ok and value <= 1):
            raise InvalidConfig(f"{param} must be within (0, 1] / [0, 1], got {value}", param=param)


def _stricter_or_equal(name: str, new: Any, base: Any) -> bool:
    kind = KNOBS[name]
    if kind == "rank":
        return MITIGATION_ORDER.index(new) >= MITIGATION_ORDER.index(base)
    if kind == "true":
        return bool(new) or not base
    if kind == "higher":
        return bool(new >= base)
    return bool(new <= base)


def org_policy(settings: Settings, stored: dict[str, Any] | None) -> dict[str, Any]:
    """Provider defaults overridden by the organization's stored policy; an unknown key is refused."""
    policy = provider_defaults(settings)
    for name, value in (stored or {}).items():
        if name == STORAGE_QUOTA_KEY:
            continue
        if name not in KNOBS:
            known = ", ".join([*KNOBS, STORAGE_QUOTA_KEY])
            raise InvalidConfig(
                f"policy.{name}: unknown policy setting (known: {known})", param=f"policy.{name}"
            )
        _check_value(name, value, f"policy.{name}")
        policy[name] = value
    return policy


def tighten(
    base: dict[str, Any], requested: dict[str, Any] | None, *, param: str = "safety"
) -> dict[str, Any]:
    """Apply a job's requested knobs to ``base``; ``InvalidConfig`` names a loosened or unknown field."""
    effective = dict(base)
    for name, value in (requested or {}).items():
        field = f"{param}.{name}"
        if name not in KNOBS:
            raise InvalidConfig(f"{field}: unknown safety setting (known: {', '.join(KNOBS)})", param=field)
        if value is None:
            continue
        _check_value(name, value, field)
        if not _stricter_or_equal(name, value, base[name]):
            raise InvalidConfig(
                f"{field}={value!r} would loosen the organization's policy ({base[name]!r}); "
                "a job may only tighten it",
                param=field,
            )
        effective[name] = value
    return effective


STORAGE_QUOTA_KEY = "storage_quota_bytes"


def storage_quota(settings: Settings, stored: dict[str, Any] | None) -> int:
    """The organization's storage quota in bytes: its stored policy's override, else the provider default."""
    value = (stored or {}).get(STORAGE_QUOTA_KEY)
    if value is None:
        return settings.storage_quota_bytes
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        param = f"policy.{STORAGE_QUOTA_KEY}"
        raise InvalidConfig(f"{param} must be a non-negative integer", param=param)
    return value
