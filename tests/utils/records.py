"""Score records for tests that need only a few of their fields (the rest are plain, unremarkable values)."""

from __future__ import annotations

from tunegate.records import Features, ScoreRecord

PLAIN_FEATURES = Features(
    numbered_list=False,
    bulleted_list=False,
    math=False,
    code=False,
    short_answer=False,
    response_tokens=12,
    response_chars=60,
    response_words=10,
)


def score_record(
    line: int,
    risk: float = 0.0,
    *,
    beyond_reference: bool = False,
    percentiles: dict[str, float] | None = None,
    reasons: tuple[str, ...] = (),
    representation: float | None = 0.5,
    gradient: float | None = 0.0,
    selfinf: float | None = 4.0,
    request_harm: float | None = None,
) -> ScoreRecord:
    return ScoreRecord(
        line=line,
        n_tokens=40,
        n_response_tokens=12,
        representation=representation,
        representation_safe=0.5 if representation is not None else None,
        representation_diff=0.0 if representation is not None else None,
        request_harm=request_harm,
        gradient=gradient,
        selfinf=selfinf,
        grad_sq_norm=1.0 if gradient is not None else None,
        percentiles=dict(percentiles or {}),
        risk=risk,
        beyond_reference=beyond_reference,
        features=PLAIN_FEATURES,
        reasons=reasons,
    )
