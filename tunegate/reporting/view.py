"""The safety report's view: the report.json dict turned into what a reader needs, in plain words.

The input is the gate's report dict (``worker/report/build.py``: decision, policy, scoring, mitigation,
training, evaluation) and optional additions it may carry (``scoring.flagged[].messages``, the flagged
examples' text; ``mitigation.acted``, ``mitigation.injected`` and ``mitigation.policy``, the mitigate stage's
log). Missing parts are left out of the page, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tunegate.reporting.svg import grouped_bars, histogram

PREVIEW_CHARS = 280  # a message longer than this is shown truncated, with a way to expand it

SCORERS = {
    "representation": "closeness to harmful compliance (representation)",
    "gradient": "pull towards harmful compliance (gradient)",
    "selfinf": "training influence (Self-Inf-N)",
}
ACTED = {
    "drop": "dropped: not trained on",
    "downweight": "down-weighted: its response is no longer trained on",
    "none": "left as it is (mitigation action 'none')",
}
_REASON = re.compile(r"^(\w+) above (\d+)% of the reference benign corpus: (.*)$")


def plain_reason(reason: str) -> str:
    """A scorer's reason in plain words: 'riskier than 97% of ordinary examples by <what>: <why>'."""
    m = _REASON.match(reason)
    if m:
        scorer, pct, why = m.groups()
        return f"riskier than {pct}% of ordinary examples by {SCORERS.get(scorer, scorer)}: {why}"
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


def check_rows(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The gate's checks, each with a plain label and its numbers in words."""
    rows = []
    for c in checks:
        name = str(c.get("check", ""))
        if name.startswith("asr_"):
            label = f"Attack success rate, {name[4:]} template"
            detail = (
                f"fine-tuned {_pct(c.get('tuned'))}, base {_pct(c.get('base'))}; "
                f"allowed at most {_pct(c.get('limit'))}"
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
        else:
            done = "kept as it is (below the mitigation threshold)" if known else "not recorded"
        messages = f.get("messages")
        rows.append(
            {
                "line": line,
                "risk": float(f.get("risk") or 0.0),
                "percentiles": [
                    (SCORERS.get(s, s), float(p)) for s, p in (f.get("percentiles") or {}).items()
                ],
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
    share = mpol.get("top_fraction", policy.get("mitigate_top_fraction"))
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
    ("n_output", "examples trained on"),
)


def evaluation_view(ev: dict[str, Any]) -> dict[str, Any]:
    templates = []
    for name, t in (ev.get("templates") or {}).items():
        base, tuned = t.get("base") or {}, t.get("tuned") or {}
        cats = sorted(set(base.get("per_category") or {}) | set(tuned.get("per_category") or {}))
        b, f = base.get("per_category") or {}, tuned.get("per_category") or {}
        templates.append(
            {
                "name": name,
                "base": _pct(base.get("asr")) + _interval(base),
                "tuned": _pct(tuned.get("asr")) + _interval(tuned),
                "n": tuned.get("n") or base.get("n"),
                "same_as_chat": bool(t.get("same_as_chat")),
                "categories": [
                    {
                        "name": c,
                        "base": _pct(b.get(c)),
                        "tuned": _pct(f.get(c)),
                        "worse": f.get(c, 0) > b.get(c, 0),
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
        "over_refusal": {
            "base": _pct((over.get("base") or {}).get("refusal_rate")),
            "tuned": _pct((over.get("tuned") or {}).get("refusal_rate")),
            "n": (over.get("tuned") or {}).get("n"),
        }
        if over
        else None,
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
        "evaluation": evaluation_view(report.get("evaluation") or {}),
    }
