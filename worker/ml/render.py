"""The one rendering function: a ``Conversation`` -> token ids + labels, exactly as training sees it.

Scoring, training and evaluation all call ``encode``/``encode_prompt`` so a score always refers to the
same tokens the adapter is trained on. The text comes from the base model's chat template; labels are the
token ids on trained assistant turns (content plus the end-of-turn marker) and -100 elsewhere, so loss
falls only on assistant tokens and ``weight: 0`` turns stay context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunegate.conversation import Conversation, Message
from tunegate.errors import InvalidFile, ModelError

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


def _as_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    # "developer" is OpenAI's newer name for the system role; chat templates know "system".
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in messages]


def render_text(tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
    text = tokenizer.apply_chat_template(
        _as_dicts(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return str(text)


def _assistant_spans(tokenizer: Any, conv: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """Full rendered text and the character spans of trained assistant turns."""
    msgs = conv.messages
    full = render_text(tokenizer, msgs)
    spans = []
    for i, m in enumerate(msgs):
        if m.role != "assistant" or m.weight <= 0:
            continue
        prefix = render_text(tokenizer, msgs[:i], add_generation_prompt=True)
        upto = render_text(tokenizer, msgs[: i + 1])
        if not upto.startswith(prefix) or not full.startswith(upto):
            raise ModelError("the chat template does not render prefix-stably; cannot mask labels")
        end = len(prefix) + len(upto[len(prefix) :].rstrip())
        spans.append((len(prefix), end))
    return full, spans


def encode(tokenizer: Any, conv: Conversation, *, max_len: int) -> Encoded:
    """Tokenize a conversation with loss labels on trained assistant tokens.

    Raises ``InvalidFile`` naming the line when the example exceeds ``max_len`` tokens or has no trained
    token.
    """
    full, spans = _assistant_spans(tokenizer, conv)
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


def encode_prompt(tokenizer: Any, messages: Sequence[Message], *, max_len: int | None = None) -> list[int]:
    """Token ids of a prompt (everything up to the assistant's turn), ready for generation."""
    text = render_text(tokenizer, messages, add_generation_prompt=True)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if max_len is not None and len(ids) > max_len:
        ids = ids[-max_len:]
    return ids


def collate(batch: Sequence[Encoded], pad_id: int, device: Any = "cpu") -> dict[str, Any]:
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
