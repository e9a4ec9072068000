"""The safety report's view: the report (``tunegate.report.SafetyReport``) turned into what a reader needs, in
plain words.

The report's parts are typed (decision, policy, scoring, mitigation, training, evaluation, repair), with the
additions it may carry (the flagged examples' text, ``FlaggedExample.messages``; the mitigate stage's log,
``ReportMitigation.acted``, ``.injected`` and ``.policy``). Missing parts are left out of the page, never
guessed; what an older report lacks was filled in once, by ``tunegate.report.upgrade``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunegate.checks import GateCheck, Judges, SequentialCheck
from tunegate.conversation import ChatMessageJSON
from tunegate.evaluation_records import (
    HarmfulSummary,
    OverRefusal,
    PairedStats,
    ProbeEval,
    SequentialStop,
    TemplateEval,
)
from tunegate.evaluation_records import Judges as JudgesReport
from tunegate.judging import WORDS, counted, counted_rates
from tunegate.report import (
    AdapterCheck,
    ConfigValue,
    ReportMitigation,
    ReportPolicy,
    ReportRepair,
    ReportScoring,
    SafetyReport,
    ScreenVerdict,
)
from tunegate.reporting.svg import grouped_bars, histogram
from tunegate.scorers import label, parse_reason

PREVIEW_CHARS = 280  # a message longer than this is shown truncated, with a way to expand it

ACTED = {
    "drop": "dropped: not trained on",
    "downweight": "down-weighted: its response is no longer trained on",
    "none": "left as it is (mitigation action 'none')",
}


def plain_reason(reason: str) -> str:
    """A scorer's reason in plain words: 'riskier than 97% of ordinary examples by <what>: <why>'."""
    parsed = parse_reason(reason)
    if parsed is not None:
        scorer, pct, why = parsed
        return f"riskier than {pct}% of ordinary examples by {label(scorer)}: {why}"
    if reason.startswith("format: "):
        return "written as: " + reason.removeprefix("format: ")
    return reason


def _pct(v: float | None) -> str:
    return f"{float(v):.1%}" if isinstance(v, int | float) else "n/a"


def _increase_detail(c: GateCheck) -> str:
    """A paired-increase check in words: the ASRs, the flips, the interval, the limit, the resolution."""
    if c.missing:
        return f"no evaluated prompts in this category; limit {_pct(c.limit)}"
    if c.upper is None:  # a report written before the gate judged paired increases
        return f"fine-tuned {_pct(c.tuned)}, base {_pct(c.base)}; allowed at most {_pct(c.limit)}"
    out = (
        f"base {_pct(c.base)}, fine-tuned {_pct(c.tuned)} on {c.n} prompts "
        f"({c.tuned_only} newly jailbroken, {c.base_only} newly refused); increase "
        f"{_signed(c.increase)}, 95% upper bound {_pct(c.upper)}, allowed at most {_pct(c.limit)}"
    )
    if c.detectable is not None:
        out += f"; this set cannot show an increase below {_pct(c.detectable)}"
    if c.flips_blocked is not None:
        out += f", and {c.flips_blocked} new jailbreaks on a 0% base would block"
    return out + _sequential_detail(c.sequential)


def _sequential_detail(seq: SequentialCheck | None) -> str:
    """A check's sequential stop in words ("" without one): the prompts used and, decided, what the data
    allow on the whole set."""
    if seq is None or not seq.n_total:
        return ""
    out = f"; evaluated sequentially, stopped after {seq.n_used} of {seq.n_total} prompts"
    if seq.decided:
        out += (
            f": on the whole set the 95% upper bound lies between {_pct(seq.lower)} and "
            f"{_pct(seq.upper)} (the bound shown), anytime-valid at {1 - float(seq.alpha or 0.05):.0%}"
        )
    else:
        out += ", which does not settle this policy's decision: the bound is of the prompts used"
    return out


def _signed(v: float | None) -> str:
    return f"{float(v):+.1%}" if isinstance(v, int | float) else "n/a"


@dataclass(frozen=True)
class CheckRow:
    """One of the gate's checks as the page shows it: a plain label, passed or not, its numbers in words."""

    label: str
    passed: bool
    detail: str


def check_rows(checks: tuple[GateCheck, ...]) -> list[CheckRow]:
    """The gate's checks, each with a plain label and its numbers in words."""
    rows = []
    for c in checks:
        if c.kind == "asr":
            label = f"Attack success rate increase, {c.template} template"
            detail = _increase_detail(c)
        elif c.kind == "probe":
            label = f"Attack success rate increase under the trigger {c.trigger!r}"
            detail = (
                f"inserted as it appeared ({c.where}, in {c.support} of {c.n_examples} training examples): "
                + _increase_detail(c)
            )
        elif c.kind == "category":
            label = f"Attack success rate increase, {c.template} template, category {c.category}"
            detail = _increase_detail(c)
        elif c.kind == "over_refusal":
            label = "Over-refusal on borderline-safe prompts"
            detail = (
                f"base {_pct(c.base)}, fine-tuned {_pct(c.tuned)} on {c.n} prompts "
                f"({_signed(c.increase)}); allowed rise {_pct(c.limit)}, "
                f"over it the job {'fails' if c.action == 'fail' else 'is released with a warning'}"
            )
        elif c.kind == "margin":
            label = f"Refusal-direction margin, {c.template} template"
            detail = (
                f"the fine-tuned model keeps {float(c.ratio or 0):.2f}x the base's margin "
                f"(at least {float(c.limit or 0):.2f}x required)"
            )
        elif c.kind == "training_data":
            label = "Training data screen"
            flagged = "flagged" if c.flagged else "not flagged"
            mitigated = "mitigated" if c.mitigated else "not mitigated"
            detail = f"{flagged}, {mitigated}" + (f": {c.reason}" if c.reason else "")
        elif c.kind == "repair_share":
            label, detail = "Share of the data to repair", str(c.reason or "")
        else:
            label, detail = c.check, ""
        rows.append(CheckRow(label, c.passed, detail))
    return rows


@dataclass(frozen=True)
class MessageView:
    """One message of an example as the page shows it: its text, a preview and whether it was trained on."""

    role: str
    text: str
    preview: str
    truncated: bool
    not_trained: bool


def _message_view(m: ChatMessageJSON) -> MessageView:
    """A chat message as the training file (or an injected example) has it: role, content, weight."""
    return _text_view(m["role"], m.get("content", ""), not_trained=m.get("weight") == 0)


def _text_view(role: str, text: str, *, not_trained: bool = False) -> MessageView:
    return MessageView(role, text, text[:PREVIEW_CHARS], len(text) > PREVIEW_CHARS, not_trained)


WHY = {  # why mitigation chose an example (worker/mitigation/select.py)
    "beyond_reference": "beyond every reference example",
    "cluster": "in the coherent high-risk cluster",
    "top_fraction": "in the riskiest share the policy names",
}


@dataclass(frozen=True)
class FlaggedRow:
    """One of the riskiest examples as the page shows it."""

    line: int
    risk: float
    percentiles: list[tuple[str, float]]  # (scorer's label, percentile)
    reasons: list[str]  # in words
    messages: list[MessageView] | None  # None: its text is not in this copy
    mitigation: str  # what was done to it, and why


def flagged_rows(scoring: ReportScoring, mitigation: ReportMitigation) -> list[FlaggedRow]:
    """The riskiest examples: line, risk, per-scorer percentiles and reasons in words, text, what was done."""
    acted = {a.line: a for a in mitigation.acted or ()}
    known = mitigation.acted is not None
    rows = []
    for f in scoring.flagged:
        act = acted.get(f.line)
        if act is not None:
            done = ACTED.get(str(act.action), str(act.action))
            if act.excluded:
                done = "excluded: nothing left to train on once its response was down-weighted"
            if mitigation.was_refused:
                done = "chosen for mitigation, but the file was refused: too much of it was flagged"
            why = [WHY.get(w, w) for w in act.why or ()]
            done += f" ({'; '.join(why)})" if why else ""
        else:
            done = "kept as it is (below the mitigation threshold)" if known else "not recorded"
        rows.append(
            FlaggedRow(
                line=f.line,
                risk=float(f.risk),
                percentiles=[(label(s), float(p)) for s, p in f.percentiles.items()],
                reasons=[plain_reason(r) for r in f.reasons],
                messages=[_message_view(m) for m in f.messages] if f.messages is not None else None,
                mitigation=done,
            )
        )
    return rows


def risk_marks(
    risk: list[float], mitigation: ReportMitigation, job_share: float | None = None
) -> list[tuple[float, str]]:
    """Thresholds on the 0..100 risk axis: the risk from which mitigation acts, and the top-share cutoff
    (the mitigate stage's, else the job's policy's ``mitigate_top_fraction``, ``job_share``)."""
    marks: list[tuple[float, str]] = []
    mpol = mitigation.policy
    min_risk = mpol.min_risk if mpol is not None else None
    if min_risk is not None:
        marks.append((float(min_risk), f"acts from risk {min_risk:g}"))
    share = mpol.mitigate_top_fraction if mpol is not None else None
    if share is None:
        share = job_share
    if share is not None and 0 < share <= 1 and risk:
        k = max(1, round(share * len(risk)))
        cutoff = sorted(risk, reverse=True)[min(k, len(risk)) - 1]
        marks.append((cutoff, f"top {share:.0%} from {cutoff:.0f}"))
    return marks


MITIGATION_COUNTS = (
    ("n_input", "examples uploaded"),
    ("n_dropped", "dropped"),
    ("n_downweighted", "down-weighted"),
    ("n_excluded", "excluded (nothing left to train on)"),
    ("n_injected", "safety examples added"),
    ("n_contrast", "contrastive helpful examples added"),
    ("n_output", "examples trained on"),
)


def _count(k: int, n: int) -> str:
    """A count of ``n`` in words (-1: not recorded, "")."""
    return f" ({k}/{n})" if k >= 0 else ""


def _asr(side: HarmfulSummary) -> str:
    return _pct(side.asr) + _count(side.n_jailbroken, side.n)


@dataclass(frozen=True)
class PairedView:
    """Paired statistics in words: the four counts, the increase, its 95% upper bound, the resolution."""

    both: int
    base_only: int
    tuned_only: int
    neither: int
    increase: str
    upper: str
    detectable: str


def paired_view(p: PairedStats | None) -> PairedView | None:
    """Paired statistics in words (None when the evaluation predates them)."""
    if p is None:
        return None
    return PairedView(
        both=p.both,
        base_only=p.base_only,
        tuned_only=p.tuned_only,
        neither=p.neither,
        increase=_signed(p.increase),
        upper=_pct(p.upper),
        detectable=_pct(p.detectable),
    )


@dataclass(frozen=True)
class SequentialView:
    """A sequential stop in words: the prompts used, the decision, what the data allow, the level."""

    n_used: int
    n_total: int
    early: bool
    decision: str
    lower: str
    upper: str
    increase: str
    level: str


def sequential_view(stop: SequentialStop | None) -> SequentialView | None:
    """A template's sequential stop in words (None: every prompt was evaluated the fixed way)."""
    if stop is None:
        return None
    return SequentialView(
        n_used=stop.n_used,
        n_total=stop.n_total,
        early=stop.n_used < stop.n_total,
        decision={"release": "released", "block": "blocked"}.get(stop.decision, "undecided"),
        lower=_pct(stop.lower),
        upper=_pct(stop.upper),
        increase=f"{_signed(stop.increase_low)} to {_signed(stop.increase_high)}",
        level=f"{1 - float(stop.alpha or 0.05):.0%}",
    )


@dataclass(frozen=True)
class CategoryView:
    """One category of a template: ASRs, whether it got worse, its paired statistics, prompts and limit."""

    name: str
    base: str
    tuned: str
    worse: bool
    paired: PairedView | None
    n: int
    limit: str


@dataclass(frozen=True)
class TemplateView:
    """One template's ASRs in words: the primary judge's and, when the gate counts other verdicts, those
    (``judges`` in words, ``counted_base`` and ``counted_tuned``), the paired statistics of the counted
    verdicts, the sequential stop, the limit, each category and their chart."""

    name: str
    judges: str | None
    counted_base: str
    counted_tuned: str
    base: str
    tuned: str
    n: int
    same_as_chat: bool
    sequential: SequentialView | None
    paired: PairedView | None
    limit: str | None
    categories: tuple[CategoryView, ...]
    chart: str


@dataclass(frozen=True)
class ProbeView:
    """One trigger probe in words: the trigger, where and how often it appeared, the ASRs, the paired
    statistics of the counted verdicts and the limit."""

    trigger: str
    where: str
    support: str
    lift: str
    why: str
    base: str
    tuned: str
    paired: PairedView | None
    judges: str | None
    counted_base: str
    counted_tuned: str
    limit: str


@dataclass(frozen=True)
class MarginView:
    template: str
    base: float
    tuned: float
    ratio: float
    layer: int


@dataclass(frozen=True)
class AgreementRow:
    """The primary judge vs the second on one reply set, in words."""

    set: str
    n: int
    primary_asr: str
    second_asr: str
    percent: str
    kappa: str
    primary_only: int
    second_only: int


@dataclass(frozen=True)
class JudgesView:
    """The second judge: what it is, its held-out accuracy, and its agreement with the primary."""

    primary: str
    second: str
    accuracy: str
    n_heldout: int
    layer: int
    rows: tuple[AgreementRow, ...]


@dataclass(frozen=True)
class OverRefusalView:
    """Over-refusal in words: base and fine-tuned refusals, the rise, the policy's limit and action."""

    base: str
    tuned: str
    n: int
    increase: str
    limit: str | None
    action: str | None
    over: bool
    paired: PairedView | None


@dataclass(frozen=True)
class JailbrokenView:
    """A fine-tuned reply judged jailbroken: its category, the prompt and the reply."""

    category: str | None
    messages: tuple[MessageView, ...]


@dataclass(frozen=True)
class EvaluationView:
    """The safety evaluation in words (``NO_EVALUATION`` for a report without one)."""

    judge: str | None
    max_new_tokens: int | None
    templates: tuple[TemplateView, ...] = ()
    margins: tuple[MarginView, ...] = ()
    probes: tuple[ProbeView, ...] = ()
    over_refusal: OverRefusalView | None = None
    judges: JudgesView | None = None
    jailbroken: tuple[JailbrokenView, ...] = ()


# a report without an evaluation (a file refused before training)
NO_EVALUATION = EvaluationView(judge=None, max_new_tokens=None)


def evaluation_view(report: SafetyReport) -> EvaluationView:
    ev = report.evaluation
    if ev is None:
        return NO_EVALUATION
    judges, over = report.gate_judges, ev.over_refusal
    return EvaluationView(
        judge=ev.judge,
        max_new_tokens=ev.max_new_tokens,
        templates=tuple(template_view(name, t, report.policy, judges) for name, t in ev.templates.items()),
        margins=tuple(MarginView(k, m.base, m.tuned, m.ratio, m.layer) for k, m in ev.margin.items()),
        probes=tuple(probe_view(p, report.policy, judges) for p in ev.probes),
        over_refusal=_over_refusal_view(over, report.policy) if over is not None else None,
        judges=judges_view(ev.judges),
        jailbroken=tuple(  # the evaluator's records of the replies (prompt, response, category ...)
            JailbrokenView(j.category, (_text_view("prompt", j.prompt), _text_view("response", j.response)))
            for j in ev.jailbroken_examples
        ),
    )


def template_view(name: str, t: TemplateEval, policy: ReportPolicy, judges: Judges) -> TemplateView:
    """One template: the ASRs, the counted paired statistics overall and per category, and their chart."""
    base, tuned = t.base, t.tuned
    cats = sorted(set(base.per_category) | set(tuned.per_category))
    b, f = base.per_category, tuned.per_category
    paired, used = counted(t, judges)
    per_cat = paired.per_category if paired is not None else {}
    limits = policy.gate_category_limits
    shown, counted_base, counted_tuned = _counted_view(t, used)
    return TemplateView(
        name=name,
        judges=shown,
        counted_base=counted_base,
        counted_tuned=counted_tuned,
        base=_asr(base),
        tuned=_asr(tuned),
        n=tuned.n or base.n,
        same_as_chat=t.same_as_chat,
        sequential=sequential_view(t.sequential),
        paired=paired_view(paired),
        limit=_pct(policy.gate_delta) if policy.gate_delta is not None else None,
        categories=tuple(
            CategoryView(
                name=c,
                base=_pct(b.get(c)),
                tuned=_pct(f.get(c)),
                worse=f.get(c, 0) > b.get(c, 0),
                paired=paired_view(per_cat.get(c)),
                n=per_cat[c].n if c in per_cat else 0,
                limit=_pct(limits[c]) if c in limits else "",
            )
            for c in cats
        ),
        chart=grouped_bars(
            cats,
            {
                "base": [float(b.get(c, 0.0)) for c in cats],
                "fine-tuned": [float(f.get(c, 0.0)) for c in cats],
            },
        )
        if cats
        else "",
    )


def _counted_view(t: TemplateEval | ProbeEval, used: str) -> tuple[str | None, str, str]:
    """What the gate counted when it is not the primary judge's verdicts: the judges, in words, and the
    ASRs under them (the report's headline when present; the primary judge's own are named as such);
    (None, "", "") when it counted the primary judge's."""
    rates = counted_rates(t, used) if used != "primary" else None
    if rates is None:
        return None, "", ""
    return WORDS[used], _pct(rates[0]), _pct(rates[1])


def probe_view(p: ProbeEval, policy: ReportPolicy, judges: Judges) -> ProbeView:
    """One trigger probe: the trigger, where and how often it appeared, the ASRs and the paired bound (of
    the verdicts the gate counts)."""
    paired, used = counted(p, judges)
    shown, counted_base, counted_tuned = _counted_view(p, used)
    return ProbeView(
        trigger=p.trigger,
        where=p.where or p.position,
        support=f"{p.count} of {p.n_examples}",
        lift=f"{float(p.lift):.1f}x" if p.lift is not None else "",
        why=p.why,
        base=_asr(p.base),
        tuned=_asr(p.tuned),
        paired=paired_view(paired),
        judges=shown,
        counted_base=counted_base,
        counted_tuned=counted_tuned,
        limit=_pct(policy.gate_delta) if policy.gate_delta is not None else "",
    )


def judges_view(j: JudgesReport | None) -> JudgesView | None:
    """The second judge and its agreement with the primary per reply set (None without one)."""
    if j is None:
        return None
    rows = []
    for name, a in j.agreement.items():
        n = a.n
        rows.append(
            AgreementRow(
                set=name,
                n=n,
                primary_asr=_pct((a.both + a.primary_only) / n) if n else "n/a",
                second_asr=_pct((a.both + a.second_only) / n) if n else "n/a",
                percent=_pct(a.percent),
                kappa=f"{float(a.kappa):.2f}",
                primary_only=a.primary_only,
                second_only=a.second_only,
            )
        )
    return JudgesView(
        primary=j.primary,
        second=j.second,
        accuracy=_pct(j.probe_heldout_accuracy),
        n_heldout=j.probe_n_heldout,
        layer=j.probe_layer,
        rows=tuple(rows),
    )


def _over_refusal_view(over: OverRefusal, policy: ReportPolicy) -> OverRefusalView:
    base, tuned = over.base, over.tuned
    rise = float(tuned.refusal_rate) - float(base.refusal_rate)
    limit = policy.over_refusal_delta
    return OverRefusalView(
        base=_pct(base.refusal_rate) + _count(base.n_refused, base.n),
        tuned=_pct(tuned.refusal_rate) + _count(tuned.n_refused, tuned.n),
        n=tuned.n,
        increase=_signed(rise),
        limit=_pct(limit) if limit is not None else None,
        action=policy.over_refusal_action,
        over=limit is not None and rise > limit + 1e-12,
        paired=paired_view(over.paired),
    )


@dataclass(frozen=True)
class DecisionView:
    """The gate's decision as the page shows it."""

    released: bool
    code: str | None
    message: str
    checks: list[CheckRow]
    warnings: list[str]


@dataclass(frozen=True)
class InjectedView:
    """An example the mitigate stage added, as the page shows it."""

    category: str | None
    messages: list[MessageView]


@dataclass(frozen=True)
class ReportView:
    """Everything the report templates show (``report_view``)."""

    decision: DecisionView
    gate_policy: dict[str, ConfigValue]  # the policy's knobs as written
    verdict: ScreenVerdict | None
    n_examples: int
    histogram: str  # the risk histogram's SVG ("": no scores)
    flagged: list[FlaggedRow]
    mitigation_counts: list[tuple[str, int]]  # (what, how many), the counts the mitigation part has
    mitigation_note: str | None
    injected: list[InjectedView]
    injected_known: bool  # the mitigation log is in this copy
    evaluation: EvaluationView
    repair: RepairView | None


def report_view(report: SafetyReport, job_share: float | None = None) -> ReportView:
    """Everything the report templates show, computed once (the templates only lay it out); ``job_share``
    is the job's policy's ``mitigate_top_fraction`` (it marks the histogram when the report's mitigation
    log does not)."""
    decision, mitigation = report.decision, report.mitigation
    risk = [float(r) for r in report.scoring.risk]
    counts = [(label, getattr(mitigation, k)) for k, label in MITIGATION_COUNTS]
    return ReportView(
        decision=DecisionView(
            released=decision.released,
            code=decision.code,
            message=decision.message,
            checks=check_rows(decision.checks),
            warnings=list(decision.warnings),
        ),
        gate_policy=dict(report.policy.knobs),
        verdict=report.scoring.summary.verdict,
        n_examples=len(risk),
        histogram=histogram(
            risk, label="risk (0-100, vs ordinary examples)", marks=risk_marks(risk, mitigation, job_share)
        )
        if risk
        else "",
        flagged=flagged_rows(report.scoring, mitigation),
        mitigation_counts=[(label, n) for label, n in counts if n is not None],
        mitigation_note=mitigation.note,
        injected=[
            InjectedView(i.category, [_message_view(m) for m in i.messages])
            for i in mitigation.injected or ()
        ],
        injected_known=mitigation.injected is not None,
        evaluation=evaluation_view(report),
        repair=repair_view(report.repair),
    )


@dataclass(frozen=True)
class AdapterRow:
    """One adapter of the repair table: the figures the release rule reads, in words."""

    variant: str
    layers: str
    layers_changed: list[str]
    evaluated: bool
    asr: list[str]  # per template
    over_refusal: str
    task_loss: str
    passed: bool
    outcome: str


@dataclass(frozen=True)
class RepairView:
    """The repair stage's record as the page shows it."""

    repaired: bool
    method: str
    attempted: bool
    reason: str
    repair_on: str
    heldout: str
    n_heldout: int
    rows: list[AdapterRow]  # the adapter as trained, then each repair tried


def repair_view(repair: ReportRepair | None) -> RepairView | None:
    """The repair stage's record (``worker/stages/repair.py``) in words: the adapter as trained and each
    repair tried, with the ASR the gate counts per template, over-refusal, the held-out task loss, the
    layers changed and the outcome. None when the gate had no erosion to repair (or the report predates
    it)."""
    if repair is None:
        return None
    original = repair.original
    rows = [_adapter_row(original, trained=True)] if original is not None else []
    rows += [_adapter_row(a, trained=False) for a in repair.attempts]
    return RepairView(
        repaired=repair.repaired,
        method=repair.method,
        attempted=repair.attempted,
        reason=repair.reason,
        repair_on=repair.repair_on,
        heldout=repair.heldout,
        n_heldout=repair.n_heldout,
        rows=rows,
    )


def _adapter_row(a: AdapterCheck, *, trained: bool) -> AdapterRow:
    """One adapter of the repair table: the figures the release rule reads."""
    asr = [
        f"{tpl} {_pct(v.base)} → {_pct(v.tuned)} (bound {_pct(v.upper)}, limit {_pct(v.limit)})"
        for tpl, v in a.asr.items()
    ]
    over = a.over_refusal
    loss_text = f"{float(a.task_loss):.4f}" if a.task_loss is not None else "not measured"
    if a.task_loss_limit is not None:
        loss_text += f" (at most {float(a.task_loss_limit):.4f})"
    if trained:
        outcome, layers = "blocked for erosion", "—"
    else:
        outcome = "passed: released" if a.passed else f"not released: {a.why or 'n/a'}"
        layers = f"{a.n_changed} of {a.n_layers}"
    return AdapterRow(
        variant="as trained" if trained else a.variant,
        layers=layers,
        layers_changed=list(a.layers_changed),
        evaluated=a.evaluated,
        asr=asr if a.evaluated else [],
        over_refusal=(
            f"{_pct(over.base)} → {_pct(over.tuned)} ({_signed(over.increase)}, limit +{_pct(over.limit)})"
            if over is not None
            else ("not measured" if a.evaluated else "")
        ),
        task_loss=loss_text,
        passed=a.passed,
        outcome=outcome,
    )
