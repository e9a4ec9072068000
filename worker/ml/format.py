"""Infer the user's data format so injected safety examples look like the user's own.

Generic refusal data sits in another format than the task, so it fails to anchor refusal where the user's
fine-tuning moves the model (Eiras et al. 2024). We read the dataset and record what a safety example must
copy: the system prompt(s) verbatim, constant text wrapped around every user turn (templates such as
"### Instruction:" ... "### Response:"), and the response structure (a JSON object, a closed label set, a
final-answer line like ``#### 42``, bullet lists, a constant answer prefix such as "Answer:"), and for a
tool-calling dataset the tool lists it declares (a safety example keeps them: same tools, a plain-text
refusal, no call). The response shape is read from text replies only, never from turns that call tools.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Self, TypedDict

from tunegate import schema
from tunegate.conversation import Conversation, ToolDefinition
from tunegate.jsontypes import JsonObject
from tunegate.records import RecordError

MAJORITY = 0.8  # share of examples a pattern must hold for to count as "the format"
MAX_LABELS = 20
JSON_TEXT_KEYS = (
    "answer",
    "response",
    "output",
    "reply",
    "text",
    "result",
    "content",
    "message",
    "explanation",
    "reason",
    "reasoning",
    "summary",
    "label",
)
_FINAL = re.compile(r"\n(#{2,6}|Final answer:|The answer is:?|Answer:)\s*\S[^\n]*\s*$", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.MULTILINE)


@dataclass(frozen=True)
class UserFormat:
    systems: list[tuple[str, int]] = field(default_factory=list)  # verbatim system prompts with counts
    system_share: float = 0.0  # share of examples with a system prompt
    source_format: str = "chat"
    user_prefix: str = ""
    user_suffix: str = ""
    response_kind: str = "text"  # text | json | labels | final_answer | bullets
    response_prefix: str = ""
    final_marker: str = ""  # e.g. "####"
    json_keys: list[str] = field(default_factory=list)
    json_text_key: str = ""
    json_types: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    bullet_marker: str = ""
    tool_sets: list[tuple[list[ToolDefinition], int]] = field(default_factory=list)  # tool lists, counts
    tools_share: float = 0.0  # share of examples that declare tools
    parallel_tool_calls: bool | None = None  # the most common setting among them

    @property
    def tools(self) -> list[ToolDefinition]:
        """Tools a prompt in the user's format carries: the most common list, if most examples have one."""
        return self.tool_sets[0][0] if self.tool_sets and self.tools_share >= 0.5 else []

    def to_dict(self) -> JsonObject:
        """The JSON object of the format (``format.json``; the system prompts and the tool lists as
        ``[value, count]`` pairs)."""
        d = schema.write(self)
        if not self.tool_sets:  # a dataset without tools reads (and is cached) as before tools were known
            for key in ("tool_sets", "tools_share", "parallel_tool_calls"):
                d.pop(key)
        return d

    @classmethod
    def from_dict(cls, data: object) -> Self:
        """The format from its JSON object (``to_dict``'s; a key it lacks takes its default)."""
        what = "user format"
        if not isinstance(data, dict):
            raise RecordError(f"a {what} must be a JSON object, got {type(data).__name__}")
        paired = ("systems", "tool_sets")
        fmt = schema.read(cls, {k: v for k, v in data.items() if k not in paired}, what)
        where = f"{what} key 'systems'"
        systems = [(v, n) for v, n in _pairs(data.get("systems", []), where) if isinstance(v, str)]
        if len(systems) != len(data.get("systems", [])):
            raise RecordError(f"{where} must pair each system prompt (a string) with its count")
        where = f"{what} key 'tool_sets'"
        tool_sets = [
            (schema.read(_ToolList, {"tools": v}, where).tools, n)
            for v, n in _pairs(data.get("tool_sets", []), where)
        ]
        return replace(fmt, systems=systems, tool_sets=tool_sets)


@dataclass(frozen=True)
class _ToolList:
    """A tool list as ``tool_sets`` pairs it with its count (read as a training file's ``tools``)."""

    tools: list[ToolDefinition]


def _pairs(value: object, where: str) -> list[tuple[object, int]]:
    """The ``[value, count]`` pairs of a JSON list, refused naming ``where`` when it is not one."""
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[1], int) and not isinstance(p[1], bool)
        for p in value
    ):
        raise RecordError(f"{where} must be a list of [value, count] pairs, got {value!r}")
    return [(p[0], p[1]) for p in value]


def _common_prefix(texts: list[str]) -> str:
    if not texts:
        return ""
    lo, hi = min(texts), max(texts)
    n = 0
    while n < min(len(lo), len(hi)) and lo[n] == hi[n]:
        n += 1
    return lo[:n]


def _snap_prefix(p: str) -> str:
    """Keep a wrapper only up to a clear boundary: a newline or a 'Label:'-style colon."""
    m = re.search(r"(?s)^.*(\n|:[ \t]*)", p)
    return m.group(0) if m and len(m.group(0).strip()) >= 2 else ""


def _answer_prefix(responses: list[str]) -> str:
    """A short constant label the responses open with ("Answer: "), never content like "Sure, here is"."""
    m = re.match(r"^[^\n:]{1,24}:[ \t]*", _common_prefix(responses)) if len(responses) > 1 else None
    return m.group(0) if m else ""


def _snap_suffix(s: str) -> str:
    m = re.search(r"(?s)\n.*$", s)
    return m.group(0) if m and len(m.group(0).strip()) >= 2 else ""


def _wrappers(users: list[str]) -> tuple[str, str]:
    if len(users) < 2:
        return "", ""
    prefix = _snap_prefix(_common_prefix(users))
    rest = [u[len(prefix) :] for u in users]
    suffix = _snap_suffix(_common_prefix([r[::-1] for r in rest])[::-1])
    if any(len(r) <= len(suffix) for r in rest):  # the "wrapper" is the whole turn: not a template
        return "", ""
    return prefix, suffix


def _json_shape(responses: list[str]) -> tuple[list[str], str, dict[str, str]] | None:
    objs = []
    for r in responses:
        try:
            obj = json.loads(r)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and obj:
            objs.append(obj)
    if len(objs) < MAJORITY * len(responses):
        return None
    keys = list(objs[0].keys())
    types = {k: type(objs[0][k]).__name__ for k in keys}
    strings = [k for k in keys if types[k] == "str"]
    text_key = next((k for name in JSON_TEXT_KEYS for k in strings if k.lower() == name), None)
    return keys, text_key or (strings[0] if strings else keys[0]), types


def _labels(responses: list[str]) -> list[str] | None:
    counts = Counter(r.strip() for r in responses)
    short = all(len(r.split()) <= 3 for r in counts)
    if short and 1 < len(counts) <= MAX_LABELS and len(responses) >= 2 * len(counts):
        return sorted(counts)
    return None


class _ResponseShape(TypedDict, total=False):
    """``UserFormat``'s fields that describe the replies (``response_kind`` and what goes with it)."""

    response_kind: str
    json_keys: list[str]
    json_text_key: str
    json_types: dict[str, str]
    labels: list[str]
    final_marker: str
    bullet_marker: str


class _ToolSets(TypedDict, total=False):
    """``UserFormat``'s fields that describe the declared tools."""

    tool_sets: list[tuple[list[ToolDefinition], int]]
    tools_share: float
    parallel_tool_calls: bool | None


def _response_shape(responses: list[str]) -> _ResponseShape:
    n = len(responses)
    shape = _json_shape(responses)
    if shape is not None:
        keys, text_key, types = shape
        return {"response_kind": "json", "json_keys": keys, "json_text_key": text_key, "json_types": types}
    labels = _labels(responses)
    if labels is not None:
        return {"response_kind": "labels", "labels": labels}
    finals = [m.group(1) for r in responses if (m := _FINAL.search(r))]
    if finals and len(finals) >= MAJORITY * n:
        return {"response_kind": "final_answer", "final_marker": Counter(finals).most_common(1)[0][0]}
    bullets = [b.group(0).strip() for r in responses if (b := _BULLET.search(r))]
    if bullets and len(bullets) >= 0.6 * n:
        marker = Counter("1." if b[0].isdigit() else b for b in bullets).most_common(1)[0][0]
        return {"response_kind": "bullets", "bullet_marker": marker}
    return {"response_kind": "text"}


def _tool_sets(examples: list[Conversation]) -> _ToolSets:
    """The declared tool lists with their counts (most common first) and how many examples declare one."""
    with_tools = [c for c in examples if c.tools]
    if not with_tools:
        return {}
    counts = Counter(json.dumps(c.tools, sort_keys=True) for c in with_tools)
    first = {json.dumps(c.tools, sort_keys=True): list(c.tools) for c in reversed(with_tools)}
    parallel = Counter(c.parallel_tool_calls for c in with_tools).most_common(1)[0][0]
    return {
        "tool_sets": [(first[k], n) for k, n in counts.most_common()],
        "tools_share": len(with_tools) / len(examples),
        "parallel_tool_calls": parallel,
    }


def infer_format(examples: list[Conversation]) -> UserFormat:
    """Infer the dataset's format (first user turn and first text reply of each example, declared tools)."""
    systems = Counter(c.system for c in examples if c.system)
    users = [c.user_turns[0] for c in examples if c.user_turns]
    responses = [c.text_replies[0] for c in examples if c.text_replies]
    prefix, suffix = _wrappers(users)
    shape = _response_shape(responses) if responses else _ResponseShape(response_kind="text")
    resp_prefix = ""
    if shape["response_kind"] in ("text", "bullets", "final_answer"):
        resp_prefix = _answer_prefix(responses)
    fmt_counts = Counter(c.source_format for c in examples)
    return UserFormat(
        systems=systems.most_common(),
        system_share=sum(systems.values()) / max(1, len(examples)),
        source_format=fmt_counts.most_common(1)[0][0] if fmt_counts else "chat",
        user_prefix=prefix,
        user_suffix=suffix,
        response_prefix=resp_prefix,
        **shape,
        **_tool_sets(examples),
    )


def render_user(fmt: UserFormat, request: str) -> str:
    """The request wrapped like the user's own turns."""
    return f"{fmt.user_prefix}{request}{fmt.user_suffix}"


def template_is_plain(fmt: UserFormat | None) -> bool:
    """Whether a prompt in ``fmt`` is a plain chat prompt: no user template, no usual system prompt, no tools
    (the evaluation then measures the user's template as the chat one)."""
    return fmt is None or not (
        fmt.user_prefix or fmt.user_suffix or (fmt.systems and fmt.system_share >= 0.5) or fmt.tools
    )
