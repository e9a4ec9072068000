"""Training examples: one internal conversation type and parsers for the formats users upload.

Accepted JSONL line shapes (all normalised to ``Conversation``):

- OpenAI chat: ``{"messages": [{"role", "content", "weight"?}, ...]}`` (``weight`` 0/1 on assistant turns);
- prompt/completion: ``{"prompt": str, "completion": str}``;
- Alpaca-style: ``{"instruction": str, "input"?: str, "output": str}``.

Nothing here imports torch: the API uses it to validate uploads, the worker to load training data.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from tunegate.errors import InvalidFile

ROLES = ("system", "developer", "user", "assistant", "tool")
# Limits of one JSONL line (documented in docs/reliability.md, "Bad input"). A valid example nests 5 deep
# (object > messages > message > content parts > part); deeper input only serves to exhaust the parser.
MAX_JSON_DEPTH = 32
# Characters in one JSON number: far above any real weight or id, far below CPython's int-conversion limit
# (4300 digits), whose ValueError and quadratic cost are what a huge integer aims at.
MAX_NUMBER_CHARS = 100
Format = Literal["chat", "prompt_completion", "alpaca"]


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    weight: float = 1.0  # only meaningful on assistant turns: 0 = context, not trained on

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.role == "assistant" and self.weight != 1.0:
            d["weight"] = int(self.weight)
        return d


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    line: int = 0  # 1-based line in the source file; 0 for generated examples
    source_format: Format = "chat"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def system(self) -> str | None:
        sys = [m.content for m in self.messages if m.role in ("system", "developer")]
        return sys[0] if sys else None

    @property
    def user_turns(self) -> list[str]:
        return [m.content for m in self.messages if m.role == "user"]

    @property
    def assistant_turns(self) -> list[str]:
        return [m.content for m in self.messages if m.role == "assistant"]

    @property
    def trained_responses(self) -> list[str]:
        return [m.content for m in self.messages if m.role == "assistant" and m.weight > 0]

    def to_chat_dict(self) -> dict[str, Any]:
        return {"messages": [m.to_dict() for m in self.messages]}


# --- structural problems (found while parsing one line) ---------------------------------------


def _fail(msg: str, line: int, fld: str | None = None) -> InvalidFile:
    return InvalidFile(msg, line=line, field=fld)


def _text(obj: dict[str, Any], key: str, line: int, *, required: bool = True) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise _fail(f"missing required key '{key}'", line, key)
        return ""
    val = obj[key]
    if not isinstance(val, str):
        raise _fail(f"'{key}' must be a string, got {type(val).__name__}", line, key)
    return val


def _content(msg: dict[str, Any], line: int, idx: int) -> str:
    key = f"messages[{idx}].content"
    content = msg.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text parts
        parts = []
        for part in content:
            is_text = isinstance(part, dict) and part.get("type") == "text"
            if not is_text or not isinstance(part.get("text"), str):
                raise _fail("only text content parts are supported", line, key)
            parts.append(part["text"])
        return "".join(parts)
    raise _fail(f"content must be a string, got {type(content).__name__}", line, key)


def _parse_chat(obj: dict[str, Any], line: int) -> Conversation:
    msgs = obj["messages"]
    if not isinstance(msgs, list):
        raise _fail("'messages' must be a list", line, "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _fail("each message must be an object", line, f"messages[{i}]")
        role = m.get("role")
        if not isinstance(role, str):
            raise _fail("message has no 'role'", line, f"messages[{i}].role")
        weight = m.get("weight", 1)
        if "weight" in m and (role != "assistant" or weight not in (0, 1) or isinstance(weight, bool)):
            raise _fail("'weight' must be 0 or 1, on assistant messages only", line, f"messages[{i}].weight")
        out.append(Message(role=role, content=_content(m, line, i), weight=float(weight)))
    return Conversation(messages=tuple(out), line=line, source_format="chat")


def parse_example(obj: Any, line: int) -> Conversation:
    """Normalise one decoded JSON value into a ``Conversation`` (structure only; see ``check_example``)."""
    if not isinstance(obj, dict):
        raise _fail(f"expected a JSON object, got {type(obj).__name__}", line)
    if "messages" in obj:
        return _parse_chat(obj, line)
    if "prompt" in obj or "completion" in obj:
        prompt, completion = _text(obj, "prompt", line), _text(obj, "completion", line)
        msgs = (Message("user", prompt), Message("assistant", completion))
        return Conversation(messages=msgs, line=line, source_format="prompt_completion")
    if "instruction" in obj or "output" in obj:
        instr, inp = _text(obj, "instruction", line), _text(obj, "input", line, required=False)
        output = _text(obj, "output", line)
        user = f"{instr}\n\n{inp}" if inp.strip() else instr
        msgs = (Message("user", user), Message("assistant", output))
        return Conversation(
            messages=msgs, line=line, source_format="alpaca", meta={"instruction": instr, "input": inp}
        )
    expected = "expected 'messages', 'prompt'/'completion' or 'instruction'/'output'"
    raise _fail(f"unrecognised example: {expected}", line)


def check_example(conv: Conversation) -> list[InvalidFile]:
    """Semantic checks of one example; returns every problem found (empty list: fine)."""
    problems: list[InvalidFile] = []
    line = conv.line
    if not conv.messages:
        return [_fail("example has no messages", line, "messages")]
    for i, m in enumerate(conv.messages):
        if m.role not in ROLES:
            problems.append(
                _fail(
                    f"unknown role '{m.role}' (expected one of {', '.join(ROLES)})",
                    line,
                    f"messages[{i}].role",
                )
            )
        elif m.role in ("user", "assistant") and not m.content.strip():
            problems.append(_fail(f"empty content in a {m.role} message", line, f"messages[{i}].content"))
    if not any(m.role == "assistant" for m in conv.messages):
        problems.append(_fail("example has no assistant message to train on", line, "messages"))
    elif not any(m.role == "assistant" and m.weight > 0 for m in conv.messages):
        problems.append(_fail("every assistant message has weight 0: nothing to train on", line, "messages"))
    return problems


# --- streaming line reader --------------------------------------------------------------------


def iter_lines(stream: BinaryIO, *, chunk_size: int = 1 << 16) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` from a binary stream in constant memory.

    Decodes UTF-8 incrementally (a leading BOM is dropped), tolerates CRLF, skips blank lines.
    Raises ``InvalidFile`` naming the line of the first invalid UTF-8 byte.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    buf = b""
    line_no = 0
    first = True
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            break
        if first:
            chunk = chunk.removeprefix(codecs.BOM_UTF8)
            first = False
        buf += chunk
        *complete, buf = buf.split(b"\n")
        for raw in complete:
            line_no += 1
            text = _decode(decoder, raw, line_no)
            if text.strip():
                yield line_no, text
    if buf:
        line_no += 1
        text = _decode(decoder, buf, line_no)
        if text.strip():
            yield line_no, text


def _decode(decoder: codecs.IncrementalDecoder, raw: bytes, line_no: int) -> str:
    try:
        text = decoder.decode(raw, final=True)
    except UnicodeDecodeError as exc:
        raise _fail(f"invalid UTF-8 at byte {exc.start} of the line", line_no) from exc
    decoder.reset()
    return text.rstrip("\r")


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``text`` opens more than ``limit`` nested arrays/objects (brackets inside strings ignored).

    A cheap scan run before ``json.loads``, whose recursive decoder raises ``RecursionError`` (or worse) on
    deeply nested input. An unterminated string ends the scan: the line is invalid JSON anyway.
    """
    outside = _STRING.sub("", text).split('"', 1)[0]
    depth = 0
    for ch in _NOT_BRACKET.sub("", outside):
        if ch in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class _NumberTooLong(ValueError):
    pass


def _bounded(convert: Any) -> Any:
    def parse(token: str) -> Any:
        if len(token) > MAX_NUMBER_CHARS:
            raise _NumberTooLong(token)
        return convert(token)

    return parse


_parse_int, _parse_float = _bounded(int), _bounded(float)


def decode_json_line(text: str, line: int) -> dict[str, Any]:
    """One JSONL line to a dict; ``InvalidFile`` naming the line for anything else (never another error)."""
    if json_depth_exceeds(text):
        raise _fail(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", line)
    try:
        obj = json.loads(text, parse_int=_parse_int, parse_float=_parse_float)
    except json.JSONDecodeError as exc:
        raise _fail(f"not valid JSON ({exc.msg} at column {exc.colno})", line) from exc
    except _NumberTooLong as exc:
        raise _fail(f"a number is longer than {MAX_NUMBER_CHARS} characters", line) from exc
    except ValueError as exc:  # int conversion limits and the like: still the line's fault
        raise _fail("a number cannot be read", line) from exc
    if not isinstance(obj, dict):
        raise _fail(f"expected a JSON object, got {type(obj).__name__}", line)
    return obj


def iter_examples(stream: BinaryIO) -> Iterator[Conversation]:
    """Parse every line of a JSONL stream; raises on the first structural problem."""
    for line, text in iter_lines(stream):
        yield parse_example(decode_json_line(text, line), line)


def load_examples(path: str | Path) -> list[Conversation]:
    """Load and check a local training file; raises ``InvalidFile`` naming the file and line."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            convs = list(iter_examples(fh))
    except InvalidFile as exc:
        raise InvalidFile(exc.reason, line=exc.line, field=exc.field, filename=str(path)) from exc
    for conv in convs:
        problems = check_example(conv)
        if problems:
            p = problems[0]
            raise InvalidFile(p.reason, line=p.line, field=p.field, filename=str(path))
    return convs


def dump_examples(convs: Iterable[Conversation], path: str | Path) -> None:
    """Write conversations as chat JSONL (atomically: temp file then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for c in convs:
            fh.write(json.dumps(c.to_chat_dict(), ensure_ascii=False) + "\n")
    tmp.replace(path)
