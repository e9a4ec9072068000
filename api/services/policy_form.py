"""The console's policy form: one field per knob of ``models.policy.KNOBS`` (a knob added there is in the
form at once) with its hint, and the posted form read back as the knobs it changes (each value as its
knob's type; a bad value stays text, so the policy check names the field)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NotRequired, TypedDict

from models.policy import KNOBS, Kind, KnobSpec, Policy, harmful_categories
from tunegate.errors import InvalidConfig
from tunegate.jsontypes import JsonObject


def knob_hint(spec: KnobSpec) -> str:
    """A knob's range and stricter direction, as the policy form says them."""
    if spec.kind == "rank":
        return f"strictness: {spec.stricter}"
    if spec.kind == "true":
        return "yes is stricter"
    if spec.kind == "limits":
        return f"{spec.interval} each, smaller is stricter"
    return f"{spec.range}, {spec.stricter} is stricter"


class PolicyField(TypedDict):
    """One knob of the console's policy form, as its template reads it."""

    name: str
    kind: Kind
    label: str
    hint: str
    help: str
    value: object  # the organization's current value, shown as is
    options: NotRequired[list[str]]  # kind "rank"
    categories: NotRequired[list[tuple[str, object]]]  # kind "limits": each category and its limit ("": none)


def policy_fields(current: Policy) -> list[PolicyField]:
    """One form field per knob of the table ``models.policy.KNOBS`` as it is now (a knob added there is in
    the form at once), with the organization's current value."""
    knobs: Mapping[str, object] = current
    fields = []
    for name, spec in KNOBS.items():
        field: PolicyField = {
            "name": name,
            "kind": spec.kind,
            "label": spec.label,
            "hint": knob_hint(spec),
            "help": spec.help,
            "value": knobs.get(name),
        }
        if spec.kind == "rank":
            field["options"] = list(spec.options)
        elif spec.kind == "limits":
            limits = knobs.get(name)
            given: Mapping[str, object] = limits if isinstance(limits, Mapping) else {}
            field["categories"] = [(cat, given.get(cat, "")) for cat in harmful_categories()]
        fields.append(field)
    return fields


def _number(raw: str) -> float | str:
    try:
        return float(raw)
    except ValueError:
        return raw  # the policy check names the field: "... must be a number"


def _knob(name: str, raw: str) -> float | str | bool:
    """A form value as the policy knob's type (a bad value stays text: the policy check then names it)."""
    kind = KNOBS[name].kind
    if kind == "rank":
        return raw
    if kind == "true":
        return {"true": True, "false": False}.get(raw, raw)
    return _number(raw)


MAX_KNOB_CHARS = 32  # a knob's value in the form: a number or a name


def policy_updates(form: dict[str, str], current: Policy) -> JsonObject:
    """The knobs the policy form changes: each knob of ``KNOBS`` it sends with a value other than the
    current one. A "limits" knob is sent as its marker field (``gate_category_limits``) and one field per
    category (``gate_category_limits.fraud``); blank means no limit."""
    for key, raw in form.items():
        if len(raw) > MAX_KNOB_CHARS and key.split(".")[0] in KNOBS:
            raise InvalidConfig(
                f"policy.{key} is longer than {MAX_KNOB_CHARS} characters", param=f"policy.{key}"
            )
    knobs: Mapping[str, object] = current
    updates: JsonObject = {}
    for name, spec in KNOBS.items():
        value: float | str | bool | dict[str, float | str]
        if spec.kind == "limits":
            if name not in form:
                continue
            prefix = f"{name}."
            value = {
                key[len(prefix) :]: _number(raw.strip())
                for key, raw in form.items()
                if key.startswith(prefix) and raw.strip()
            }
        else:
            raw = form.get(name, "").strip()
            if not raw:
                continue
            value = _knob(name, raw)
        if value != knobs[name]:
            updates[name] = value
    return updates


def policy_form_fields(form: dict[str, str]) -> list[tuple[str, str]]:
    """The posted policy fields, to post again from the confirmation."""
    names = set(KNOBS)
    return [(k, v) for k, v in form.items() if k in names or any(k.startswith(f"{n}.") for n in names)]
