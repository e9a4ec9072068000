"""The scorers: one ``ScorerSpec`` per scorer in ``SCORERS``, the only list of them.

A spec is the scorer's data: its name, the report's label for it, the words of its reason, whether it reads
the example's gradient (the engine then runs a backward pass) and the anchors' gradient direction, and the
further raw values it records beside its own (its companions). How the engine computes it is its hook,
registered under the same name on the worker side (``worker.scoring.scorers.HOOKS``: it needs torch, which
the ground floor never imports); a test checks that every spec has one.

Everything else is derived from the table when it is read: the score stage's default and accepted scorers
(``worker.stages.score.ScoreConfig``), the engine's dispatch and whether it needs a backward pass or the
gradient direction (``worker.scoring.engine``), the raw values a score record carries (``tunegate.records``:
the shipped scorers have typed fields, any other registered scorer's values are carried in ``extra``), a
reason's words (``reason``, read by ``worker.scoring.report``; ``parse_reason`` for ``tunegate.reporting``),
the report's labels (``label``) and the CLI's ``--scorers`` default and help (``cli.options.ScorersCommand``).
Adding a scorer is adding a spec here and its hook there.

This module is on the ground floor because the report's view (``tunegate.reporting``) reads the labels and
words, and the records the raw values' names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# a scorer's reason: "<name> above <p>% of the reference benign corpus: <why>" (``reason``, ``parse_reason``)
_REASON = re.compile(r"^(\w+) above (\d+)% of the reference benign corpus: (.*)$")
_NAME = re.compile(r"\w+")  # a reason starts with it and ``--scorers`` lists names comma-separated


@dataclass(frozen=True)
class ScorerSpec:
    """One scorer: everything the score stage, the records, the reasons, the report and the CLI know about it
    (how the engine computes it is its hook, ``worker.scoring.scorers.HOOKS[name]``)."""

    name: str
    label: str  # what it measures, for a reader of the report ("closeness to harmful compliance (...)")
    why: str  # why a high value is risky: the end of its reason
    needs_gradient: bool = False  # it reads the example's gradient (⟨g, d⟩, ‖g‖²): one backward per example
    needs_direction: bool = False  # it reads the anchors' gradient direction d (anchor features with it)
    companions: tuple[str, ...] = ()  # further raw values it records, summarized beside it (never ranked)
    # it measures closeness or pull towards *harmful compliance*: the screen counts it only for a reply to a
    # request the base reads as harmful (``ScoreRecord.request_harm``); answering a benign request that sounds
    # risky sits as close to the harmful anchors and pulls the same way, and is what the base should do
    harm_only: bool = False

    def __post_init__(self) -> None:
        for name in (self.name, *self.companions):
            if not _NAME.fullmatch(name):
                raise ValueError(f"scorer {self.name!r}: a raw value's name is letters, digits and '_' only")
        for what in ("label", "why"):
            if not getattr(self, what) or "\n" in getattr(self, what):
                raise ValueError(f"scorer {self.name}: its {what} is one non-empty line")
        if self.needs_direction and not self.needs_gradient:
            raise ValueError(f"scorer {self.name}: the gradient direction is read with the gradient")

    def reason(self, percentile: float) -> str:
        """The reason an example at ``percentile`` of the reference corpus on this scorer gives."""
        return f"{self.name} above {percentile:.0f}% of the reference benign corpus: {self.why}"


# The scorer table, in the order the engine fills, the records list and the summaries show them. Read when
# used (never copied at import), so a scorer added here is in every derived place at once.
SCORERS: dict[str, ScorerSpec] = {
    spec.name: spec
    for spec in (
        ScorerSpec(
            "representation",
            "closeness to harmful compliance (representation)",
            "its final hidden state is close to a harmful request being complied with",
            companions=("representation_safe", "representation_diff", "request_harm"),
            harm_only=True,
        ),
        ScorerSpec(
            "gradient",
            "pull towards harmful compliance (gradient)",
            "training on it moves the model towards harmful-compliance anchors and away from refusals",
            needs_gradient=True,
            needs_direction=True,
            harm_only=True,
        ),
        ScorerSpec(
            "selfinf",
            "training influence (Self-Inf-N)",
            "its length-normalised gradient norm (Self-Inf-N) is large: it would move the model a lot",
            needs_gradient=True,
        ),
    )
}


def needs_gradient(names: Iterable[str]) -> bool:
    """Whether scoring ``names`` (registered scorers) takes a backward pass."""
    return any(SCORERS[n].needs_gradient for n in names)


def needs_direction(names: Iterable[str]) -> bool:
    """Whether scoring ``names`` (registered scorers) takes the anchors' gradient direction."""
    return any(SCORERS[n].needs_direction for n in names)


def raw_names(names: Iterable[str]) -> tuple[str, ...]:
    """The raw values scoring ``names`` (registered scorers) records: each one's own, then its companions."""
    return tuple(v for n in names for v in (n, *SCORERS[n].companions))


def label(name: str) -> str:
    """A scorer's label for the report (an unknown name, e.g. a removed scorer's in an old report: itself)."""
    spec = SCORERS.get(name)
    return spec.label if spec is not None else name


def parse_reason(reason: str) -> tuple[str, str, str] | None:
    """A scorer's reason (``ScorerSpec.reason``) as (scorer, percentile, why); None for any other reason."""
    m = _REASON.match(reason)
    if m is None:
        return None
    scorer, pct, why = m.groups()
    return scorer, pct, why
