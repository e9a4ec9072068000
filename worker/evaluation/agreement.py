"""Agreement of two judges' verdicts on the same responses: counts, percent agreement, Cohen's kappa."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tunegate.evaluation_records import HarmfulRecord, JudgeAgreement


@dataclass(frozen=True)
class Agreement:
    both: int  # both judges say jailbroken
    first_only: int
    second_only: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.first_only + self.second_only + self.neither

    @property
    def percent(self) -> float:
        """Share of responses on which the two judges agree (1.0 for none)."""
        return (self.both + self.neither) / self.n if self.n else 1.0

    @property
    def kappa(self) -> float:
        """Cohen's kappa: (p_o - p_e) / (1 - p_e); 1.0 when chance agreement is already total (p_e = 1)."""
        n = self.n
        if not n:
            return 1.0
        a1, a2 = (self.both + self.first_only) / n, (self.both + self.second_only) / n
        pe = a1 * a2 + (1 - a1) * (1 - a2)
        return 1.0 if pe >= 1.0 else (self.percent - pe) / (1 - pe)


def agreement(first: Sequence[bool], second: Sequence[bool]) -> Agreement:
    if len(first) != len(second):
        raise ValueError(f"agreement needs verdicts on the same responses: {len(first)} vs {len(second)}")
    pairs = list(zip(first, second, strict=True))
    return Agreement(
        both=sum(a and b for a, b in pairs),
        first_only=sum(a and not b for a, b in pairs),
        second_only=sum(b and not a for a, b in pairs),
        neither=sum(not a and not b for a, b in pairs),
    )


def records_agreement(records: Sequence[HarmfulRecord]) -> JudgeAgreement | None:
    """The primary verdict (``jailbroken``) vs the probe's (``probe_jailbroken``) over harmful records, as the
    evaluation reports it; None when the records carry no probe verdicts."""
    if not records or not all(r.has_probe for r in records):
        return None
    a = agreement([r.jailbroken for r in records], [bool(r.probe_jailbroken) for r in records])
    return JudgeAgreement(
        n=a.n,
        both=a.both,
        primary_only=a.first_only,
        second_only=a.second_only,
        neither=a.neither,
        percent=a.percent,
        kappa=a.kappa,
    )
