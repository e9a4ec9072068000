"""The console's policy form: one field per knob of ``models.policy.KNOBS`` (a knob added there is in the
form at once) with its hint, and the posted form read back as the knobs it changes (each value as its
knob's type; a bad value stays text, so the policy check names the field)."""

from __future__ import annotations

from typing import Any

from models.policy import KNOBS, KnobSpec, harmful_categories
from tunegate.errors import InvalidConfig


def knob_hint(spec: KnobSpec) -> str:
    """A knob's range and stricter direction, as the policy form says them."""
    if spec.kind == "rank":
        return f"strictness: {spec.stricter}"
    if spec.kind == "true":
        return "yes is stricter"
    if spec.kind == "limits":
        return f"{spec.interval} each, smaller is stricter"
    return f"{spec.range}, {spec.stricter} is stricter"


def policy_fields(current: dict[str, Any]) -> list[dict[str, Any]]:
    """One form field per knob of the table ``models.policy.KNOBS`` as it is now (a knob added there is in
    the form at once), with the organization's current value."""
    fields = []
    for name, spec in KNOBS.items():
        field: dict[str, Any] = {
            "name": name,
            "kind": spec.kind,
            "label": spec.label,
            "hint": knob_hint(spec),
            "help": spec.help,
            "value": current.get(name),
        }
        if spec.kind == "rank":
            field["options"] = list(spec.options)
        elif spec.kind == "limits":
            limits = current.get(name) or {}
            field["categories"] = [(cat, limits.get(cat, "")) for cat in harmful_categories()]
        fields.append(field)
    return fields


def _number(raw: str) -> Any:
    try:
        return float(raw)
    except ValueError:
        return raw  # the policy check names the field: "... must be a number"


def _knob(name: str, raw: str) -> Any:
    """A form value as the policy knob's type (a bad value stays text: the policy check then names it)."""
    kind = KNOBS[name].kind
    if kind == "rank":
        return raw
    if kind == "true":
        return {"true": True, "false": False}.get(raw, raw)
    return _number(raw)


MAX_KNOB_CHARS = 32  # a knob's value in the form: a number or a name


def policy_updates(form: dict[str, str], current: dict[str, Any]) -> dict[str, Any]:
    """The knobs the policy form changes: each knob of ``KNOBS`` it sends with a value other than the
    current one. A "limits" knob is sent as its marker field (``gate_category_limits``) and one field per
    category (``gate_category_limits.fraud``); blank means no limit."""
    for key, raw in form.items():
        if len(raw) > MAX_KNOB_CHARS and key.split(".")[0] in KNOBS:
            raise InvalidConfig(
                f"policy.{key} is longer than {MAX_KNOB_CHARS} characters", param=f"policy.{key}"
            )
    updates: dict[str, Any] = {}
    for name, spec in KNOBS.items():
        if spec.kind == "limits":
            if name not in form:
                continue
            prefix = f"{name}."
            value: Any = {
                key[len(prefix) :]: _number(raw.strip())
                for key, raw in form.items()
                if key.startswith(prefix) and raw.strip()
            }
        else:
            raw = form.get(name, "").strip()
            if not raw:
                continue
            value = _knob(name, raw)
        if value != current[name]:
            updates[name] = value
    return updates


def policy_form_fields(form: dict[str, str]) -> list[tuple[str, str]]:
    """The posted policy fields, to post again from the confirmation."""
    names = set(KNOBS)
    return [(k, v) for k, v in form.items() if k in names or any(k.startswith(f"{n}.") for n in names)]
