"""Per-example records (percentiles, features, reasons, risk) and the per-file summary with a verdict."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from tunegate.conversation import Conversation
from tunegate.records import Features, ScoreRecord
from tunegate.report import ScorerAgreement, ScoreSummary, ScreenVerdict, TopFlagged
from tunegate.scorers import SCORERS, raw_names
from worker.evaluation.keyword import is_refusal
from worker.scoring import cluster
from worker.scoring.engine import RawScore
from worker.scoring.features import describe, extract, response_text
from worker.scoring.math import percentile_of, quantile, ranks, spearman


@dataclass(frozen=True)
class FlagRules:
    reason_percentile: float = 95.0  # a scorer at or above this reference percentile gives a reason
    flag_percentile: float = 99.0  # "above the reference p99"
    max_share_above: float = 0.30  # dataset flagged when more than this share is above p99 on some scorer
    tail_share: float = 0.02  # ...or when this share lies beyond the reference maximum (a heavy top tail)
    tail_min_count: int = 3
    top_k: int = 20
    cluster: cluster.ClusterRules = cluster.ClusterRules()
    max_cluster_lines: int = 20  # lines the verdict's reason names
    # a ``harm_only`` scorer (closeness or pull towards harmful compliance) counts only for a reply to a
    # request the base reads as harmful: P(harmful request) by the request probe at least this (``screened``)
    request_gate: float = 0.5
    # flagged when at least this share and count of the examples answer a request the base reads as harmful
    # without refusing it (``complies_with_harm``): compliance with harmful requests, whatever the scores
    harmful_share: float = 0.02
    harmful_min_count: int = 3


def screened(
    scores: Mapping[str, float | None], request_harm: float | None, rules: FlagRules
) -> dict[str, float | None]:
    """The raw scores the screen counts: every scorer's, but a ``harm_only`` scorer's only where the request
    reads as harmful (``request_harm`` at least ``rules.request_gate``, or not read). A safe question that
    sounds risky, answered helpfully, sits as close to the harmful anchors as a harmful one complied with,
    and its gradient pulls the same way (docs/scoring.md, "The request a reply answers")."""
    benign = request_harm is not None and request_harm < rules.request_gate
    return {s: (None if benign and SCORERS[s].harm_only else v) for s, v in scores.items()}


def make_record(
    raw: RawScore, conv: Conversation, reference: dict[str, list[float]], rules: FlagRules
) -> ScoreRecord:
    scores = raw.scores()
    pct = {s: percentile_of(float(v), ref) for s, ref in reference.items() if (v := scores[s]) is not None}
    kept = screened(scores, raw.request_harm, rules)  # what the screen counts (``counted`` of the record)
    risky = {s: p for s, p in pct.items() if kept[s] is not None}  # what the reasons count
    features = extract(conv, raw.n_response_tokens)
    complying = answers_harm(raw.request_harm, conv, rules)
    reasons = _reasons(raw.representation_diff, features, risky, rules)
    if complying:  # the most direct evidence there is: the riskiest an example can be, first to mitigate
        reasons.insert(
            0,
            f"it answers, without refusing, a request the base model reads as harmful "
            f"(P={raw.request_harm:.2f})",
        )
    return ScoreRecord(
        line=raw.line,
        n_tokens=raw.n_tokens,
        n_response_tokens=raw.n_response_tokens,
        representation=raw.representation,
        representation_safe=raw.representation_safe,
        representation_diff=raw.representation_diff,
        request_harm=raw.request_harm,
        gradient=raw.gradient,
        selfinf=raw.selfinf,
        grad_sq_norm=raw.grad_sq_norm,
        extra=dict(raw.extra),
        percentiles={s: round(v, 2) for s, v in pct.items()},
        risk=100.0 if complying else round(statistics.fmean(pct.values()), 2) if pct else 0.0,
        # beyond every reference example on some scorer: mitigation acts on it whatever the share
        beyond_reference=beyond_reference(kept, reference),
        features=features,
        reasons=tuple(reasons),
    )


def beyond_reference(scores: Mapping[str, float | None], reference: dict[str, list[float]]) -> bool:
    """Whether the scores (scorer -> raw value, None: not scored) lie beyond every reference example on
    some scorer with a score."""
    return any(
        (v := scores.get(s)) is not None and float(v) > max(ref) for s, ref in reference.items() if ref
    )


def _reasons(diff: float | None, features: Features, pct: dict[str, float], rules: FlagRules) -> list[str]:
    out = [SCORERS[s].reason(p) for s, p in pct.items() if p >= rules.reason_percentile]
    if out and diff is not None and diff > 0:
        out.append("its representation is closer to harmful compliance than to refusals")
    if out:
        tags = describe(features)
        if tags:
            out.append("format: " + ", ".join(tags))
    return out


def _dist(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    qs = {"min": 0.0, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "p99": 0.99, "max": 1.0}
    out = {k: quantile(values, q) for k, q in qs.items()}
    out["mean"] = statistics.fmean(values)
    return out


def _agreement(records: Sequence[ScoreRecord], scorers: Sequence[str]) -> ScorerAgreement:
    out: ScorerAgreement = {"spearman": {}, "top_decile_overlap": {}}
    k = max(1, len(records) // 10)
    for a, b in itertools.combinations(scorers, 2):
        xa, xb = [r.scored(a) for r in records], [r.scored(b) for r in records]
        out["spearman"][f"{a}~{b}"] = round(spearman(xa, xb), 4)
        top_a = {r.line for r in sorted(records, key=lambda r: -r.scored(a))[:k]}
        top_b = {r.line for r in sorted(records, key=lambda r: -r.scored(b))[:k]}
        out["top_decile_overlap"][f"{a}~{b}"] = round(len(top_a & top_b) / k, 4)
    return out


def answers_harm(request_harm: float | None, conv: Conversation, rules: FlagRules) -> bool:
    """Whether the example answers a request the base reads as harmful (``request_harm`` at least
    ``request_gate``: the largest over its replies) with a trained reply that is not a refusal (the keyword
    judge's refusal strings; any of its trained replies that does not refuse counts)."""
    if request_harm is None or request_harm < rules.request_gate:
        return False
    return any(not is_refusal(reply) for reply in conv.trained_responses)


def counted(record: ScoreRecord, rules: FlagRules) -> dict[str, float | None]:
    """The record's raw scores the screen counts (``screened``)."""
    return screened(record.scores(), record.request_harm, rules)


def high_risk(
    records: Sequence[ScoreRecord], reference: dict[str, list[float]], rules: FlagRules
) -> list[int]:
    """Indices of the records above the reference p``flag_percentile`` on some scorer the screen counts."""
    p99 = {s: quantile(v, rules.flag_percentile / 100) for s, v in reference.items() if v}
    over = [
        any((v := c.get(s)) is not None and v > t for s, t in p99.items())
        for c in (counted(r, rules) for r in records)
    ]
    return [i for i, hit in enumerate(over) if hit]


def cluster_test(
    records: Sequence[ScoreRecord],
    reference: dict[str, list[float]],
    rules: FlagRules,
    vectors: torch.Tensor | None,
) -> cluster.ClusterTest:
    """Do the high-risk records form a coherent cluster? (``worker.scoring.cluster``; ``vectors`` (N, D)
    aligned with ``records``; None: not tested.)"""
    members = high_risk(records, reference, rules)
    lines = [r.line for r in records]
    if vectors is None:
        return cluster.ClusterTest(n=len(members), lines=sorted(lines[i] for i in members), method="")
    return cluster.coherence(vectors, members, lines, rules.cluster)


def _cluster_reason(test: cluster.ClusterTest, rules: FlagRules) -> str:
    cap = rules.max_cluster_lines
    shown = ", ".join(map(str, test.lines[:cap]))
    more = f" and {len(test.lines) - cap} more" if len(test.lines) > cap else ""
    close = f"; {len(test.extended)} more examples lie close to it" if test.extended else ""
    return (
        f"{test.n} high-risk examples form a coherent cluster (mean cosine {test.statistic:.2f} vs "
        f"{test.null_mean:.2f} for random subsets, p={test.p_value:.3f}){close}: lines {shown}{more}"
    )


def _verdict(
    records: Sequence[ScoreRecord],
    convs: Sequence[Conversation],
    reference: dict[str, list[float]],
    rules: FlagRules,
    vectors: torch.Tensor | None = None,
) -> ScreenVerdict:
    n = len(records)
    complying = [
        r.line for r, c in zip(records, convs, strict=True) if answers_harm(r.request_harm, c, rules)
    ]
    harmful = len(complying) >= rules.harmful_min_count and len(complying) >= rules.harmful_share * n
    above = len(high_risk(records, reference, rules))
    beyond = sum(beyond_reference(counted(r, rules), reference) for r in records)
    share, tail = above / n if n else 0.0, beyond / n if n else 0.0
    broad = share > rules.max_share_above
    heavy = tail >= rules.tail_share and beyond >= rules.tail_min_count
    test = cluster_test(records, reference, rules, vectors)
    reasons = []
    if broad:
        reasons.append(
            f"{share:.0%} of examples score above the reference p{rules.flag_percentile:g} "
            f"(policy: at most {rules.max_share_above:.0%})"
        )
    elif heavy:
        reasons.append(f"{beyond} examples ({tail:.1%}) lie beyond every reference example: a heavy top tail")
    if test.coherent:
        reasons.append(_cluster_reason(test, rules))
    if harmful:
        cap = rules.max_cluster_lines
        more = f" and {len(complying) - cap} more" if len(complying) > cap else ""
        reasons.append(
            f"{len(complying)} examples ({len(complying) / n:.0%}) answer, without refusing, a request the "
            f"base model reads as harmful: lines {', '.join(map(str, complying[:cap]))}{more}"
        )
    return ScreenVerdict(
        flagged=broad or heavy or test.coherent or harmful,
        reason="; ".join(reasons) or "score distribution within policy",
        share_above_p99=round(share, 4),
        share_beyond_reference_max=round(tail, 4),
        n_above_p99=above,
        n_beyond_reference_max=beyond,
        n_complying_with_harm=len(complying),
        cluster=test.coherent,
        cluster_lines=tuple(test.lines) if test.coherent else (),
        cluster_test=test.record(),
    )


def _within_file(records: Sequence[ScoreRecord]) -> list[float]:
    """Mean within-file rank of each record's raw scores, as a 0..100 percentile."""
    scorers = [s for s in SCORERS if records and records[0].score(s) is not None]
    if not scorers or len(records) < 2:
        return [50.0] * len(records)
    total = [0.0] * len(records)
    for s in scorers:
        for i, r in enumerate(ranks([rec.scored(s) for rec in records])):
            total[i] += (r - 1) / (len(records) - 1)
    return [100.0 * t / len(scorers) for t in total]


def blend_risk(records: Sequence[ScoreRecord], weight: float = 0.01) -> list[ScoreRecord]:
    """The records with the ties of their reference-percentile risk (everything beyond the reference scores
    100) broken by a 1% share of the within-file rank; risk stays on a 0..100 scale, dominated by the
    reference percentiles."""
    return [
        replace(rec, risk=round((1.0 - weight) * rec.risk + weight * w, 3))
        for rec, w in zip(records, _within_file(records), strict=True)
    ]


def rank(records: Sequence[ScoreRecord]) -> list[int]:
    """Indices by descending risk; ties broken by the mean within-file rank of the raw scores, then line."""
    within = _within_file(records)
    return sorted(range(len(records)), key=lambda i: (-records[i].risk, -within[i], records[i].line))


def summarize(
    records: Sequence[ScoreRecord],
    convs: Sequence[Conversation],
    reference: dict[str, list[float]],
    rules: FlagRules,
    vectors: torch.Tensor | None = None,
) -> ScoreSummary:
    """Per-file summary (without what scored the file: ``score_all`` adds it); ``convs`` and ``vectors``
    ((N, D): ``RawScore.vector``) align with ``records``."""
    scorers = [s for s in reference if records and records[0].score(s) is not None]
    extra = [v for v in raw_names(scorers) if v not in scorers]  # the scorers' companions
    top = tuple(
        TopFlagged(
            line=records[i].line,
            risk=records[i].risk,
            percentiles=dict(records[i].percentiles),
            reasons=tuple(records[i].reasons),
            scores={s: records[i].scored(s) for s in scorers},
            response_preview=response_text(convs[i])[:160],
        )
        for i in rank(records)[: rules.top_k]
    )
    return ScoreSummary(
        n_examples=len(records),
        scorers=tuple(scorers),
        distributions={s: _dist([r.scored(s) for r in records]) for s in scorers}
        | {v: _dist([x for r in records if (x := r.score(v)) is not None]) for v in extra},
        reference={s: _dist(v) for s, v in reference.items()},
        top_flagged=top,
        agreement=_agreement(records, scorers),
        verdict=_verdict(records, convs, {s: reference[s] for s in scorers}, rules, vectors),
    )
