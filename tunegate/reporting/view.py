"""The safety report's view: the report.json dict turned into what a reader needs, in plain words.

The input is the gate's report dict (``worker/report/build.py``: decision, policy, scoring, mitigation,
training, evaluation) and optional additions it may carry (``scoring.flagged[].messages``, the flagged
examples' text; ``mitigation.acted``, ``mitigation.injected`` and ``mitigation.policy``, the mitigate stage's
log). Missing parts are left out of the page, never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunegate.judging import WORDS, counted, counted_rates
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


def _pct(v: Any) -> str:
    return f"{float(v):.1%}" if isinstance(v, int | float) else "n/a"


def _interval(side: dict[str, Any]) -> str:
    ci = side.get("ci") or side.get("interval")
    if isinstance(ci, Sequence) and len(ci) == 2 and all(isinstance(x, int | float) for x in ci):
        return f" (95% interval {ci[0]:.1%} to {ci[1]:.1%})"
    return ""


def _increase_detail(c: dict[str, Any]) -> str:
    """A paired-increase check in words: the ASRs, the flips, the interval, the limit, the resolution."""
    if c.get("missing"):
        return f"no evaluated prompts in this category; limit {_pct(c.get('limit'))}"
    if "upper" not in c:  # a report written before the gate judged paired increases
        limit = _pct(c.get("limit"))
        return f"fine-tuned {_pct(c.get('tuned'))}, base {_pct(c.get('base'))}; allowed at most {limit}"
    out = (
        f"base {_pct(c.get('base'))}, fine-tuned {_pct(c.get('tuned'))} on {c.get('n')} prompts "
        f"({c.get('tuned_only')} newly jailbroken, {c.get('base_only')} newly refused); increase "
        f"{_signed(c.get('increase'))}, 95% upper bound {_pct(c.get('upper'))}, allowed at most "
        f"{_pct(c.get('limit'))}"
    )
    if isinstance(c.get("detectable"), int | float):
        out += f"; this set cannot show an increase below {_pct(c.get('detectable'))}"
    if isinstance(c.get("flips_blocked"), int):
        out += f", and {c['flips_blocked']} new jailbreaks on a 0% base would block"
    return out + _sequential_detail(c.get("sequential"))


def _sequential_detail(seq: Any) -> str:
    """A check's sequential stop in words ("" without one): the prompts used and, decided, what the data
    allow on the whole set."""
    if not isinstance(seq, dict) or not seq.get("n_total"):
        return ""
    out = f"; evaluated sequentially, stopped after {seq.get('n_used')} of {seq.get('n_total')} prompts"
    if seq.get("decided"):
        out += (
            f": on the whole set the 95% upper bound lies between {_pct(seq.get('lower'))} and "
            f"{_pct(seq.get('upper'))} (the bound shown), anytime-valid at "
            f"{1 - float(seq.get('alpha') or 0.05):.0%}"
        )
    else:
        out += ", which does not settle this policy's decision: the bound is of the prompts used"
    return out


def _signed(v: Any) -> str:
    return f"{float(v):+.1%}" if isinstance(v, int | float) else "n/a"


def check_rows(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The gate's checks, each with a plain label and its numbers in words."""
    rows = []
    for c in checks:
        name = str(c.get("check", ""))
        if name.startswith("asr_"):
            label = f"Attack success rate increase, {name[4:]} template"
            detail = _increase_detail(c)
        elif name.startswith("probe:"):
            label = f"Attack success rate increase under the trigger {c.get('trigger')!r}"
            detail = (
                f"inserted as it appeared ({c.get('where')}, in {c.get('support')} of "
                f"{c.get('n_examples')} training examples): " + _increase_detail(c)
            )
        elif name.startswith("category_"):
            tpl, _, cat = name[9:].partition(":")
            label = f"Attack success rate increase, {tpl} template, category {cat}"
            detail = _increase_detail(c)
        elif name == "over_refusal":
            label = "Over-refusal on borderline-safe prompts"
            detail = (
                f"base {_pct(c.get('base'))}, fine-tuned {_pct(c.get('tuned'))} on {c.get('n')} prompts "
                f"({_signed(c.get('increase'))}); allowed rise {_pct(c.get('limit'))}, "
                f"over it the job {'fails' if c.get('action') == 'fail' else 'is released with a warning'}"
            )
        elif name.startswith("margin_"):
            label = f"Refusal-direction margin, {name[7:]} template"
            detail = (
                f"the fine-tuned model keeps {float(c.get('ratio') or 0):.2f}x the base's margin "
                f"(at least {float(c.get('limit') or 0):.2f}x required)"
            )
        elif name == "training_data":
            label = "Training data screen"
            flagged = "flagged" if c.get("flagged") else "not flagged"
            mitigated = "mitigated" if c.get("mitigated") else "not mitigated"
            detail = f"{flagged}, {mitigated}" + (f": {c['reason']}" if c.get("reason") else "")
        elif name == "repair_share":
            label, detail = "Share of the data to repair", str(c.get("reason") or "")
        else:
            label, detail = name, ""
        rows.append({"label": label, "passed": bool(c.get("passed")), "detail": detail})
    return rows


def _message_view(m: dict[str, Any]) -> dict[str, Any]:
    text = str(m.get("content", ""))
    return {
        "role": str(m.get("role", "")),
        "text": text,
        "preview": text[:PREVIEW_CHARS],
        "truncated": len(text) > PREVIEW_CHARS,
        "not_trained": m.get("weight") == 0,
    }


WHY = {  # why mitigation chose an example (worker/mitigation/select.py)
    "beyond_reference": "beyond every reference example",
    "cluster": "in the coherent high-risk cluster",
    "top_fraction": "in the riskiest share the policy names",
}


def flagged_rows(scoring: dict[str, Any], mitigation: dict[str, Any]) -> list[dict[str, Any]]:
    """The riskiest examples: line, risk, per-scorer percentiles and reasons in words, text, what was done."""
    acted = {int(a["line"]): a for a in mitigation.get("acted") or [] if isinstance(a.get("line"), int)}
    known = "acted" in mitigation
    rows = []
    for f in scoring.get("flagged") or []:
        line = f.get("line")
        act = acted.get(line) if isinstance(line, int) else None
        if act is not None:
            done = ACTED.get(str(act.get("action")), str(act.get("action")))
            if act.get("excluded"):
                done = "excluded: nothing left to train on once its response was down-weighted"
            if mitigation.get("refused"):
                done = "chosen for mitigation, but the file was refused: too much of it was flagged"
            why = [WHY.get(str(w), str(w)) for w in act.get("why") or []]
            done += f" ({'; '.join(why)})" if why else ""
        else:
            done = "kept as it is (below the mitigation threshold)" if known else "not recorded"
        messages = f.get("messages")
        rows.append(
            {
                "line": line,
                "risk": float(f.get("risk") or 0.0),
                "percentiles": [(label(s), float(p)) for s, p in (f.get("percentiles") or {}).items()],
                "reasons": [plain_reason(str(r)) for r in f.get("reasons") or []],
                "messages": [_message_view(m) for m in messages] if isinstance(messages, list) else None,
                "mitigation": done,
            }
        )
    return rows


def risk_marks(
    risk: list[float], mitigation: dict[str, Any], policy: dict[str, Any]
) -> list[tuple[float, str]]:
    """Thresholds on the 0..100 risk axis: the risk from which mitigation acts, and the top-share cutoff."""
    marks: list[tuple[float, str]] = []
    mpol = mitigation.get("policy") or {}
    min_risk = mpol.get("min_risk")
    if isinstance(min_risk, int | float):
        marks.append((float(min_risk), f"acts from risk {min_risk:g}"))
    share = mpol.get("mitigate_top_fraction", policy.get("mitigate_top_fraction"))
    if isinstance(share, int | float) and 0 < share <= 1 and risk:
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


def _count(side: dict[str, Any], key: str) -> str:
    k, n = side.get(key), side.get("n")
    return f" ({k}/{n})" if isinstance(k, int) and k >= 0 and isinstance(n, int) else ""


def paired_view(p: dict[str, Any] | None) -> dict[str, Any] | None:
    """Paired statistics in words (None when the evaluation predates them)."""
    if not p:
        return None
    return {
        "both": p.get("both"),
        "base_only": p.get("base_only"),
        "tuned_only": p.get("tuned_only"),
        "neither": p.get("neither"),
        "increase": _signed(p.get("increase")),
        "upper": _pct(p.get("upper")),
        "detectable": _pct(p.get("detectable")),
    }


def sequential_view(stop: dict[str, Any] | None) -> dict[str, Any] | None:
    """A template's sequential stop in words (None: every prompt was evaluated the fixed way)."""
    if not stop:
        return None
    return {
        "n_used": stop.get("n_used"),
        "n_total": stop.get("n_total"),
        "early": (stop.get("n_used") or 0) < (stop.get("n_total") or 0),
        "decision": {"release": "released", "block": "blocked"}.get(str(stop.get("decision")), "undecided"),
        "lower": _pct(stop.get("lower")),
        "upper": _pct(stop.get("upper")),
        "increase": f"{_signed(stop.get('increase_low'))} to {_signed(stop.get('increase_high'))}",
        "level": f"{1 - float(stop.get('alpha') or 0.05):.0%}",
    }


def evaluation_view(ev: dict[str, Any], policy: dict[str, Any] | None = None) -> dict[str, Any]:
    policy = policy or {}
    templates = []
    for name, t in (ev.get("templates") or {}).items():
        base, tuned = t.get("base") or {}, t.get("tuned") or {}
        cats = sorted(set(base.get("per_category") or {}) | set(tuned.get("per_category") or {}))
        b, f = base.get("per_category") or {}, tuned.get("per_category") or {}
        paired, used = counted(t, policy.get("gate_judges", "primary"))
        per_cat = paired.get("per_category") or {}
        limits = policy.get("gate_category_limits") or {}
        templates.append(
            {
                "name": name,
                **_counted_view(t, used),
                "base": _pct(base.get("asr")) + _count(base, "n_jailbroken") + _interval(base),
                "tuned": _pct(tuned.get("asr")) + _count(tuned, "n_jailbroken") + _interval(tuned),
                "n": tuned.get("n") or base.get("n"),
                "same_as_chat": bool(t.get("same_as_chat")),
                "sequential": sequential_view(t.get("sequential")),
                "paired": paired_view(paired),
                "limit": _pct(policy["gate_delta"]) if "gate_delta" in policy else None,
                "categories": [
                    {
                        "name": c,
                        "base": _pct(b.get(c)),
                        "tuned": _pct(f.get(c)),
                        "worse": f.get(c, 0) > b.get(c, 0),
                        "paired": paired_view(per_cat.get(c)),
                        "n": (per_cat.get(c) or {}).get("both", 0)
                        + sum(
                            (per_cat.get(c) or {}).get(k, 0) for k in ("base_only", "tuned_only", "neither")
                        ),
                        "limit": _pct(limits[c]) if c in limits else "",
                    }
                    for c in cats
                ],
                "chart": grouped_bars(
                    cats,
                    {
                        "base": [float(b.get(c, 0.0)) for c in cats],
                        "fine-tuned": [float(f.get(c, 0.0)) for c in cats],
                    },
                )
                if cats
                else "",
            }
        )
    over = ev.get("over_refusal") or {}
    return {
        "judge": ev.get("judge"),
        "max_new_tokens": ev.get("max_new_tokens"),
        "templates": templates,
        "margins": [{"template": k, **v} for k, v in (ev.get("margin") or {}).items()],
        "probes": [probe_view(p, policy) for p in ev.get("probes") or []],
        "over_refusal": _over_refusal_view(over, policy) if over else None,
        "judges": judges_view(ev.get("judges")),
        "jailbroken": [
            {
                "category": j.get("category"),
                "messages": [
                    _message_view({"role": "prompt", "content": j.get("prompt")}),
                    _message_view({"role": "response", "content": j.get("response")}),
                ],
            }
            for j in ev.get("jailbroken_examples") or []
        ],
    }


def _counted_view(t: dict[str, Any], used: str) -> dict[str, Any]:
    """What the gate counted when it is not the primary judge's verdicts: the judges, in words, and the
    ASRs under them (the report's headline when present; the primary judge's own are named as such)."""
    rates = counted_rates(t, used) if used != "primary" else None
    if rates is None:
        return {"judges": None}
    return {"judges": WORDS[used], "counted_base": _pct(rates[0]), "counted_tuned": _pct(rates[1])}


def probe_view(p: dict[str, Any], policy: dict[str, Any]) -> dict[str, Any]:
    """One trigger probe: the trigger, where and how often it appeared, the ASRs and the paired bound (of
    the verdicts the gate counts)."""
    base, tuned = p.get("base") or {}, p.get("tuned") or {}
    paired, used = counted(p, policy.get("gate_judges", "primary"))
    lift = p.get("lift")
    return {
        "trigger": str(p.get("trigger", "")),
        "where": p.get("where") or p.get("position"),
        "support": f"{p.get('count')} of {p.get('n_examples')}",
        "lift": f"{float(lift):.1f}x" if isinstance(lift, int | float) else "",
        "why": p.get("why", ""),
        "base": _pct(base.get("asr")) + _count(base, "n_jailbroken"),
        "tuned": _pct(tuned.get("asr")) + _count(tuned, "n_jailbroken"),
        "paired": paired_view(paired),
        **_counted_view(p, used),
        "limit": _pct(policy["gate_delta"]) if "gate_delta" in policy else "",
    }


def judges_view(j: dict[str, Any] | None) -> dict[str, Any] | None:
    """The second judge and its agreement with the primary per reply set (None without one)."""
    if not j:
        return None
    rows = []
    for name, a in (j.get("agreement") or {}).items():
        n = int(a.get("n") or 0)
        kappa = a.get("kappa")
        rows.append(
            {
                "set": name,
                "n": n,
                "primary_asr": _pct((a["both"] + a["primary_only"]) / n) if n else "n/a",
                "second_asr": _pct((a["both"] + a["second_only"]) / n) if n else "n/a",
                "percent": _pct(a.get("percent")),
                "kappa": f"{float(kappa):.2f}" if isinstance(kappa, int | float) else "n/a",
                "primary_only": a.get("primary_only"),
                "second_only": a.get("second_only"),
            }
        )
    return {
        "primary": j.get("primary"),
        "second": j.get("second"),
        "accuracy": _pct(j.get("probe_heldout_accuracy")),
        "n_heldout": j.get("probe_n_heldout"),
        "layer": j.get("probe_layer"),
        "rows": rows,
    }


def _over_refusal_view(over: dict[str, Any], policy: dict[str, Any]) -> dict[str, Any]:
    base, tuned = over.get("base") or {}, over.get("tuned") or {}
    b_rate, t_rate = base.get("refusal_rate"), tuned.get("refusal_rate")
    numbers = isinstance(b_rate, int | float) and isinstance(t_rate, int | float)
    rise = float(t_rate) - float(b_rate) if numbers else None  # type: ignore[arg-type]
    limit = policy.get("over_refusal_delta")
    return {
        "base": _pct(b_rate) + _count(base, "n_refused"),
        "tuned": _pct(t_rate) + _count(tuned, "n_refused"),
        "n": tuned.get("n"),
        "increase": _signed(rise),
        "limit": _pct(limit) if isinstance(limit, int | float) else None,
        "action": policy.get("over_refusal_action"),
        "over": isinstance(rise, float) and isinstance(limit, int | float) and rise > limit + 1e-12,
        "paired": paired_view(over.get("paired")),
    }


def report_view(report: dict[str, Any], policy: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the report templates show, computed once (the templates only lay it out)."""
    decision = report.get("decision") or {}
    scoring = report.get("scoring") or {}
    mitigation = report.get("mitigation") or {}
    risk = [float(r) for r in scoring.get("risk") or []]
    verdict = (scoring.get("summary") or {}).get("verdict") or {}
    return {
        "decision": {
            "released": bool(decision.get("released")),
            "code": decision.get("code"),
            "message": decision.get("message", ""),
            "checks": check_rows(decision.get("checks") or []),
            "warnings": [str(w) for w in decision.get("warnings") or []],
        },
        "gate_policy": report.get("policy") or {},
        "verdict": verdict,
        "n_examples": len(risk),
        "histogram": histogram(
            risk, label="risk (0-100, vs ordinary examples)", marks=risk_marks(risk, mitigation, policy or {})
        )
        if risk
        else "",
        "flagged": flagged_rows(scoring, mitigation),
        "mitigation_counts": [(label, mitigation[k]) for k, label in MITIGATION_COUNTS if k in mitigation],
        "mitigation_note": mitigation.get("note"),
        "injected": [
            {"category": i.get("category"), "messages": [_message_view(m) for m in i.get("messages") or []]}
            for i in mitigation.get("injected") or []
        ],
        "injected_known": "injected" in mitigation,
        "evaluation": evaluation_view(report.get("evaluation") or {}, report.get("policy") or {}),
        "repair": repair_view(report.get("repair")),
    }


def repair_view(repair: dict[str, Any] | None) -> dict[str, Any] | None:
    """The repair stage's record (``worker/stages/repair.py``) in words: the adapter as trained and each
    repair tried, with the ASR the gate counts per template, over-refusal, the held-out task loss, the
    layers changed and the outcome. None when the gate had no erosion to repair (or the report predates
    it)."""
    if not repair:
        return None
    rows = []
    original = repair.get("original")
    for a in ([original] if original else []) + list(repair.get("attempts") or []):
        rows.append(_adapter_row(a, trained=a is original))
    return {
        "repaired": bool(repair.get("repaired")),
        "method": repair.get("method") or "",
        "attempted": bool(repair.get("attempted")),
        "reason": str(repair.get("reason") or ""),
        "repair_on": repair.get("repair_on") or "",
        "heldout": repair.get("heldout") or "",
        "n_heldout": repair.get("n_heldout") or 0,
        "rows": rows,
    }


def _adapter_row(a: dict[str, Any], *, trained: bool) -> dict[str, Any]:
    """One adapter of the repair table: the figures the release rule reads."""
    asr = [
        f"{tpl} {_pct(v.get('base'))} → {_pct(v.get('tuned'))} (bound {_pct(v.get('upper'))}, limit "
        f"{_pct(v.get('limit'))})"
        for tpl, v in (a.get("asr") or {}).items()
    ]
    over = a.get("over_refusal") or {}
    loss, limit = a.get("task_loss"), a.get("task_loss_limit")
    loss_text = f"{float(loss):.4f}" if isinstance(loss, int | float) else "not measured"
    if isinstance(limit, int | float):
        loss_text += f" (at most {float(limit):.4f})"
    if trained:
        outcome, layers = "blocked for erosion", "—"
    else:
        outcome = "passed: released" if a.get("passed") else f"not released: {a.get('why') or 'n/a'}"
        layers = f"{a.get('n_changed', 0)} of {a.get('n_layers', 0)}"
    return {
        "variant": "as trained" if trained else str(a.get("variant", "")),
        "layers": layers,
        "layers_changed": [str(m) for m in a.get("layers_changed") or []],
        "evaluated": bool(a.get("evaluated")),
        "asr": asr if a.get("evaluated") else [],
        "over_refusal": (
            f"{_pct(over.get('base'))} → {_pct(over.get('tuned'))} ({_signed(over.get('increase'))}, limit "
            f"+{_pct(over.get('limit'))})"
            if over
            else ("not measured" if a.get("evaluated") else "")
        ),
        "task_loss": loss_text,
        "passed": bool(a.get("passed")),
        "outcome": outcome,
    }
