"""Typed per-example records: the score stage's ``ScoreRecord`` and the safety scan's ``ScanRecord``.

The worker builds score records (``worker/scoring/report.py``), the score stage writes them to
``scores.jsonl`` (one ``to_dict()`` a line) and every reader (mitigation, the gate's report, trigger mining,
the safety scan, the panel) reads their attributes. A safety scan turns them into scan records
(``worker/scan.py``, its ``records.jsonl``), which the API pages through.

A score record has a typed field for each raw value of the shipped scorers (``RAW_FIELDS``); the values
of any other scorer registered in ``tunegate.scorers.SCORERS`` are carried in its ``extra`` and written as
keys of their own beside the others, so every scorer is one key of a ``scores.jsonl`` line however it was
added.

``to_dict`` gives the exact JSON object written before records were typed (same keys, same order), so
stored results load unchanged; ``from_dict`` is the JSON boundary: it refuses a key it does not know, naming
it, and takes an older score record through one upgrade path (``upgrade``).

This module is on the ground floor because the API reads scan records and ``tunegate.reporting`` what is
built from score records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Literal, Self, cast, get_args

from tunegate.jsontypes import JsonObject, JsonValue
from tunegate.scorers import SCORERS, raw_names

ScanAction = Literal["keep", "downweight", "exclude", "drop", "refuse"]


class RecordError(ValueError):
    """A stored record this version cannot read (an unknown key, a missing one, a wrong type); the message
    names the key."""


@dataclass(frozen=True)
class Features:
    """Format features of the example's trained response (``worker.scoring.features.extract``)."""

    numbered_list: bool
    bulleted_list: bool
    math: bool
    code: bool
    short_answer: bool
    response_tokens: int
    response_chars: int
    response_words: int

    def to_dict(self) -> dict[str, bool | int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: object) -> Self:
        r = _Reader(data, "score record's features", _keys(cls))
        return cls(
            numbered_list=r.flag("numbered_list"),
            bulleted_list=r.flag("bulleted_list"),
            math=r.flag("math"),
            code=r.flag("code"),
            short_answer=r.flag("short_answer"),
            response_tokens=r.integer("response_tokens"),
            response_chars=r.integer("response_chars"),
            response_words=r.integer("response_words"),
        )


@dataclass(frozen=True)
class ScoreRecord:
    """One example's scores: the raw values (None for a scorer that did not run; a scorer with no typed field
    in ``extra``), each scorer's percentile in the reference benign corpus, the combined ``risk`` (0..100),
    whether it lies beyond every reference example on some scorer, the response's format features and the
    reasons in words (empty: not risky)."""

    line: int  # 1-based line of the training file
    n_tokens: int  # sequence length
    n_response_tokens: int  # supervised tokens
    representation: float | None
    representation_safe: float | None
    representation_diff: float | None
    # how the base reads the request a reply answers: P(harmful request) by the request probe (the largest
    # over the trained replies); the screen counts closeness to harmful compliance only for a request read
    # as harmful (``FlagRules.request_gate``); None: not read
    request_harm: float | None
    gradient: float | None
    selfinf: float | None
    grad_sq_norm: float | None
    percentiles: dict[str, float]  # scorer -> its percentile in the reference corpus (0..100)
    risk: float  # the scorers' combined reference percentile, 0..100
    beyond_reference: bool  # beyond every reference example on some scorer
    features: Features
    reasons: tuple[str, ...]  # why it is risky, in words (empty: it is not)
    # the raw values of registered scorers with no field here (``extra_names``), name -> value; a scorer that
    # did not run has none
    extra: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        typed = sorted(set(self.extra) & set(RAW_FIELDS))
        if typed:
            raise ValueError(f"a score record's extra values have typed fields: {', '.join(typed)}")

    def score(self, name: str) -> float | None:
        """The raw value ``name`` (a scorer, one of its companions such as ``representation_diff``, or
        ``grad_sq_norm``; None: it was not scored)."""
        if name in RAW_FIELDS:
            return cast(float | None, getattr(self, name))
        if name in extra_names():
            return self.extra.get(name)
        known = ", ".join((*RAW_FIELDS, *extra_names()))
        raise KeyError(f"a score record has no raw score {name!r} (known: {known})")

    def scored(self, name: str) -> float:
        """The raw value ``name`` of a scorer that ran on this record (a missing one raises, naming it)."""
        value = self.score(name)
        if value is None:
            raise RecordError(f"the score record of line {self.line} has no {name} score")
        return value

    def scores(self) -> dict[str, float | None]:
        """Each scorer's raw value (None: it did not run)."""
        return {s: self.score(s) for s in SCORERS}

    def to_dict(self) -> JsonObject:
        """The JSON object of a ``scores.jsonl`` line (keys in the order they have always been written; a
        request not read, as in a record from before ``request_harm``, is written without the key, so an
        older line is written back as it was read)."""
        raw = [n for n in RAW_FIELDS if n != "request_harm" or self.request_harm is not None]
        return {
            **{n: getattr(self, n) for n in ("line", "n_tokens", "n_response_tokens", *raw)},
            **self.extra,
            "percentiles": dict(self.percentiles),
            "risk": self.risk,
            "beyond_reference": self.beyond_reference,
            "features": self.features.to_dict(),
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_dict(cls, data: object) -> Self:
        """A record from its JSON object; an older record is upgraded first (``upgrade``)."""
        extra = extra_names()
        keys = [*(f.name for f in fields(cls) if f.name != "extra"), *extra]
        r = _Reader(upgrade(data), "score record", keys)
        return cls(
            line=r.integer("line"),
            n_tokens=r.integer("n_tokens"),
            n_response_tokens=r.integer("n_response_tokens"),
            representation=r.optional_number("representation"),
            representation_safe=r.optional_number("representation_safe"),
            representation_diff=r.optional_number("representation_diff"),
            # written only when the request was read (``to_dict``)
            request_harm=r.optional_number("request_harm") if "request_harm" in r.data else None,
            gradient=r.optional_number("gradient"),
            selfinf=r.optional_number("selfinf"),
            grad_sq_norm=r.optional_number("grad_sq_norm"),
            percentiles=r.numbers("percentiles"),
            risk=r.number("risk"),
            beyond_reference=r.flag("beyond_reference"),
            features=Features.from_dict(r.required("features")),
            reasons=r.strings("reasons"),
            extra={n: r.number(n) for n in extra if n in r.data},
        )


# the raw values a score record has a typed field for (its ``float | None`` fields; ``RawScore`` the same), in
# record order: the shipped scorers' values and companions, and the gradient's squared norm
RAW_FIELDS = tuple(f.name for f in fields(ScoreRecord) if f.type == "float | None")


def extra_names() -> tuple[str, ...]:
    """The raw values of the registered scorers that have no typed field (carried in ``extra``), now."""
    return tuple(n for n in raw_names(SCORERS) if n not in RAW_FIELDS)


def upgrade(data: object) -> object:
    """The one path from an older score record's JSON to this version's keys (anything but a JSON object
    is left for ``from_dict`` to refuse).

    - before ``beyond_reference`` (the cluster test, commit 029165f): no example was marked beyond the
      reference, which is how every reader took a missing flag.

    A record without ``request_harm`` (from before the request probe, issue 26 §3, or whose request was not
    read) needs no upgrade: it reads as None, and the screen counts every scorer for it, as it did then.
    """
    if not isinstance(data, dict) or "beyond_reference" in data:
        return data
    return {**data, "beyond_reference": False}


@dataclass(frozen=True)
class ScanRecord:
    """One line of a scanned file (a safety scan's ``records.jsonl``): its score record's risk, percentiles
    and reasons (with the mitigate stage's reasons to act, in words), its rank (1: the riskiest), the rules
    that chose it for mitigation (``why``), what the mitigate stage would do with it and its text."""

    line: int
    rank: int
    risk: float
    percentiles: dict[str, float]
    reasons: tuple[str, ...]
    why: tuple[str, ...]
    action: ScanAction
    text: str

    def to_dict(self) -> JsonObject:
        """The JSON object of a ``records.jsonl`` line."""
        return {
            "line": self.line,
            "rank": self.rank,
            "risk": self.risk,
            "percentiles": dict(self.percentiles),
            "reasons": list(self.reasons),
            "why": list(self.why),
            "action": self.action,
            "text": self.text,
        }

    @classmethod
    def from_dict(cls, data: object) -> Self:
        r = _Reader(data, "scan record", _keys(cls))
        return cls(
            line=r.integer("line"),
            rank=r.integer("rank"),
            risk=r.number("risk"),
            percentiles=r.numbers("percentiles"),
            reasons=r.strings("reasons"),
            why=r.strings("why"),
            action=cast(ScanAction, r.one_of("action", get_args(ScanAction))),
            text=r.string("text"),
        )


def known_keys(data: object, names: Sequence[str], what: str, *, a_what: str = "") -> JsonObject:
    """``data``, a stored record's JSON object, when each of its keys is one of ``names``; else a
    ``RecordError``: "<a_what> must be a JSON object, got <type>" (``a_what``: ``what`` unless given) or
    "<what> has an unknown key ... (known: ...); it was written by another version"."""
    if not isinstance(data, dict):
        raise RecordError(f"{a_what or what} must be a JSON object, got {type(data).__name__}")
    unknown = [k for k in data if k not in names]
    if unknown:
        raise RecordError(
            f"{what} has an unknown key {unknown[0]!r} (known: {', '.join(names)}); "
            "it was written by another version"
        )
    return data


def _keys(cls: type) -> list[str]:
    """A record's JSON keys: its dataclass fields."""
    return [f.name for f in fields(cls)]


class _Reader:
    """Typed reads of one JSON object's keys, each failure a ``RecordError`` naming the key; a key not among
    ``names`` is refused up front."""

    def __init__(self, data: object, what: str, names: list[str]) -> None:
        self.data = known_keys(data, names, what, a_what=f"a {what}")
        self.what = what

    def required(self, key: str) -> JsonValue:
        if key not in self.data:
            raise RecordError(f"{self.what} lacks the key {key!r}")
        return self.data[key]

    def _bad(self, key: str, kind: str) -> RecordError:
        return RecordError(f"{self.what} key {key!r} must be {kind}, got {self.data[key]!r}")

    def integer(self, key: str) -> int:
        value = self.required(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer")
        return value

    def flag(self, key: str) -> bool:
        value = self.required(key)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def string(self, key: str) -> str:
        value = self.required(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def one_of(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.string(key)
        if value not in choices:
            raise self._bad(key, f"one of {', '.join(choices)}")
        return value

    def number(self, key: str) -> float:
        """A number, kept as JSON gave it (an int stays an int, so a record is written back as read)."""
        value = _number(self.required(key))
        if value is None:
            raise self._bad(key, "a number")
        return value

    def optional_number(self, key: str) -> float | None:
        return None if self.required(key) is None else self.number(key)

    def numbers(self, key: str) -> dict[str, float]:
        value = self.required(key)
        numbers = {k: _number(v) for k, v in value.items()} if isinstance(value, dict) else {}
        if not isinstance(value, dict) or any(v is None for v in numbers.values()):
            raise self._bad(key, "an object of numbers")
        return {k: v for k, v in numbers.items() if v is not None}

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.required(key)
        strings = tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()
        if not isinstance(value, list) or len(strings) != len(value):
            raise self._bad(key, "a list of strings")
        return strings


def _number(value: JsonValue) -> float | None:
    """``value`` when it is a JSON number (not a bool), else None."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None
