"""The one rendering function: a ``Conversation`` -> token ids + labels, exactly as training sees it.

Scoring, training and evaluation all call ``encode``/``encode_prompt`` so a score always refers to the
same tokens the adapter is trained on. The text comes from the base model's chat template; labels are the
token ids on trained assistant turns (content, tool calls and the end-of-turn marker) and -100 elsewhere, so
loss falls only on assistant tokens (never on tool outputs) and ``weight: 0`` turns stay context.

Tools: a template that renders tools itself (probed once per template: ``supports_tools``) gets them as
``apply_chat_template(messages, tools=...)`` with each call's arguments as a dict, the way Hugging Face
templates (Qwen2.5, Llama 3.1, ...) expect. A template without tool support (SmolLM2's) gets a documented text
form in its ordinary roles, so training still teaches the calls: the tool list in the system message
(``FALLBACK_TOOLS``), each call as a ``<tool_call>`` JSON block in the assistant turn, and the outputs of
consecutive tool messages as ``<tool_response>`` blocks in one user turn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict

from jinja2.exceptions import TemplateError

from tunegate.conversation import Conversation, Message, ToolDefinition
from tunegate.errors import InvalidFile, ModelError
from tunegate.jsontypes import JsonObject

if TYPE_CHECKING:
    from torch import Tensor

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE where no loss
    line: int = 0
    anchor: bool = False  # trained toward the frozen base's next-token distribution (KL), not its own tokens

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_response_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)

    def first_response_tokens(self, n: int) -> Encoded:
        """Same sequence, labels kept only on the first ``n`` supervised tokens (anchor loss)."""
        kept, out = 0, []
        for t in self.labels:
            if t != IGNORE and kept < n:
                out.append(t)
                kept += 1
            else:
                out.append(IGNORE)
        return Encoded(self.input_ids, tuple(out), self.line, self.anchor)

    def through_first_opening(self) -> Encoded:
        """The sequence cut after its first supervised token: the state where the first reply opens is all a
        request probe reads, and under causal attention no later token changes it (the reply's forward pass
        would be wasted). Unchanged when nothing is supervised."""
        first = next((i for i, t in enumerate(self.labels) if t != IGNORE), None)
        if first is None:
            return self
        return Encoded(self.input_ids[: first + 1], self.labels[: first + 1], self.line, self.anchor)


Tools = Sequence[ToolDefinition]  # the example's tool definitions, as uploaded


class TemplateFunctionCall(TypedDict):
    """A call as Hugging Face chat templates take it: the arguments as the object, not its text."""

    name: str
    arguments: JsonObject  # the user's JSON arguments object


class TemplateToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: TemplateFunctionCall


class TemplateMessage(TypedDict):
    """One message handed to ``tokenizer.apply_chat_template``."""

    role: str
    content: str
    tool_calls: NotRequired[list[TemplateToolCall]]
    tool_call_id: NotRequired[str]  # a tool output: the call it answers, and that call's function
    name: NotRequired[str]


FALLBACK_TOOLS = (
    "# Tools\n\nYou may call these functions:\n<tools>\n{tools}\n</tools>\n\nTo call one, answer with:\n"
    '<tool_call>\n{{"name": <function name>, "arguments": <arguments object>}}\n</tool_call>'
)
_PROBE_TOOL = {"type": "function", "function": {"name": "probe_tool_x", "description": "", "parameters": {}}}
_PROBE_CALL = {"id": "call_probe", "type": "function", "function": {"name": "probe_call_y", "arguments": {}}}
_PROBE = [
    {"role": "user", "content": "probe"},
    {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]},
    {"role": "tool", "content": "probe_output_z", "tool_call_id": "call_probe", "name": "probe_call_y"},
]
_TOOL_SUPPORT: dict[str, bool] = {}


def supports_tools(tokenizer: Any) -> bool:
    """Whether the chat template renders tools, tool calls and tool outputs itself (cached per template)."""
    key = str(tokenizer.chat_template)
    if key not in _TOOL_SUPPORT:
        try:
            text = str(tokenizer.apply_chat_template(_PROBE, tools=[_PROBE_TOOL], tokenize=False))
        except Exception:  # any template failure on tool input means the template cannot render tools
            text = ""
        _TOOL_SUPPORT[key] = all(w in text for w in ("probe_tool_x", "probe_call_y", "probe_output_z"))
    return _TOOL_SUPPORT[key]


def _role(m: Message) -> str:
    # "developer" is OpenAI's newer name for the system role; chat templates know "system".
    return "system" if m.role == "developer" else m.role


def _native_dicts(messages: Sequence[Message]) -> list[TemplateMessage]:
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    out: list[TemplateMessage] = []
    for m in messages:
        d: TemplateMessage = {"role": _role(m), "content": m.content}
        if m.tool_calls:
            d["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.parsed_arguments},
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            d["tool_call_id"], d["name"] = m.tool_call_id, names.get(m.tool_call_id, "")
        out.append(d)
    return out


def _fallback_turn(m: Message) -> str:
    """A turn for a template without tool support: its content, then one ``<tool_call>`` block per call."""
    blocks = [f"<tool_call>\n{c.as_json()}\n</tool_call>" for c in m.tool_calls]
    return "\n".join(([m.content] if m.content else []) + blocks)


def _fallback_dicts(messages: Sequence[Message], tools: Tools) -> list[TemplateMessage]:
    out: list[TemplateMessage] = []
    after_tool = False
    for m in messages:
        if m.role == "tool":  # consecutive outputs (of parallel calls) make one user turn
            block = f"<tool_response>\n{m.content}\n</tool_response>"
            if after_tool:
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
        else:
            out.append({"role": _role(m), "content": _fallback_turn(m)})
        after_tool = m.role == "tool"
    if tools:
        listing = FALLBACK_TOOLS.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0]["content"] += "\n\n" + listing
        else:
            out.insert(0, {"role": "system", "content": listing})
    return out


def render_text(
    tokenizer: Any, messages: Sequence[Message], *, tools: Tools = (), add_generation_prompt: bool = False
) -> str:
    """The chat template's text of ``messages`` (and ``tools``), natively or in the fallback text form."""
    uses_tools = bool(tools) or any(m.tool_calls or m.role == "tool" for m in messages)
    if uses_tools and supports_tools(tokenizer):
        text = tokenizer.apply_chat_template(
            _native_dicts(messages),
            tools=list(tools) or None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    else:
        text = tokenizer.apply_chat_template(
            _fallback_dicts(messages, tools), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    return str(text)


def _assistant_spans(tokenizer: Any, conv: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """Full rendered text and the character spans of trained assistant turns."""
    msgs, tools = conv.messages, conv.tools
    full = render_text(tokenizer, msgs, tools=tools)
    spans = []
    for i, m in enumerate(msgs):
        if m.role != "assistant" or m.weight <= 0:
            continue
        prefix = render_text(tokenizer, msgs[:i], tools=tools, add_generation_prompt=True)
        upto = render_text(tokenizer, msgs[: i + 1], tools=tools)
        if not upto.startswith(prefix) or not full.startswith(upto):
            raise ModelError("the chat template does not render prefix-stably; cannot mask labels")
        end = len(prefix) + len(upto[len(prefix) :].rstrip())
        spans.append((len(prefix), end))
    return full, spans


def encode(tokenizer: Any, conv: Conversation, *, max_len: int) -> Encoded:
    """Tokenize a conversation with loss labels on trained assistant tokens.

    Raises ``InvalidFile`` naming the line when the example exceeds ``max_len`` tokens, has no trained
    token, or is something the base model's chat template refuses (e.g. parallel calls in Llama 3.1's).
    """
    try:
        full, spans = _assistant_spans(tokenizer, conv)
    except TemplateError as exc:
        raise InvalidFile(
            f"the base model's chat template cannot render this example: {exc}",
            line=conv.line,
            field="messages",
            code="template_error",
        ) from exc
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    for k, (start, _end) in enumerate(enc["offset_mapping"]):
        if any(s <= start < e for s, e in spans):
            labels[k] = ids[k]
    if len(ids) > max_len:
        raise InvalidFile(
            f"example is {len(ids)} tokens, longer than the model's limit of {max_len}",
            line=conv.line,
            field="messages",
            code="example_too_long",
        )
    if all(t == IGNORE for t in labels):
        raise InvalidFile(
            "example has no assistant tokens to train on (empty response?)",
            line=conv.line,
            field="messages",
            code="empty_response",
        )
    return Encoded(tuple(ids), tuple(labels), conv.line)


def encode_prompt(
    tokenizer: Any, messages: Sequence[Message], *, tools: Tools = (), max_len: int | None = None
) -> list[int]:
    """Token ids of a prompt (everything up to the assistant's turn, with ``tools``), ready for generation."""
    text = render_text(tokenizer, messages, tools=tools, add_generation_prompt=True)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if max_len is not None and len(ids) > max_len:
        ids = ids[-max_len:]
    return ids


def collate(batch: Sequence[Encoded], pad_id: int, device: Any = "cpu") -> dict[str, Tensor]:
    """Right-pad a batch: input_ids/labels/attention_mask, each (B, T)."""
    import torch

    T = max(len(e) for e in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}
