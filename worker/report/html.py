"""The safety report as one HTML page: inline CSS and SVG, no scripts, no external requests."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from worker.report.svg import grouped_bars, histogram

CSS = (
    "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
    ".ok{background:#dff0d8;padding:1em}.bad{background:#f2dede;padding:1em}pre{white-space:pre-wrap;"
    "background:#f6f6f6;padding:.5em;font-size:12px}"
)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)[:300]
    return "" if v is None else str(v)


def _decision(report: dict[str, Any]) -> str:
    d = report["decision"]
    cls = "ok" if d["released"] else "bad"
    title = "Released" if d["released"] else f"Blocked: {d['code']}"
    return f'<div class="{cls}"><h2>{escape(title)}</h2><p>{escape(d["message"])}</p></div>' + _table(
        d["checks"], ["check", "passed", "base", "tuned", "ratio", "limit", "flagged", "mitigated"]
    )


def _scoring(report: dict[str, Any]) -> str:
    s = report["scoring"]
    verdict = s["summary"].get("verdict", {})
    out = f"<h2>Training data scores</h2><p>Verdict: {escape(_fmt(verdict))}</p>"
    if s["risk"]:
        out += histogram(s["risk"], label="combined risk percentile")
    return (
        out + "<h3>Riskiest examples</h3>" + _table(s["flagged"], ["line", "risk", "percentiles", "reasons"])
    )


def _mitigation(report: dict[str, Any]) -> str:
    m = report["mitigation"]
    keys = ["n_input", "n_dropped", "n_downweighted", "n_excluded", "n_injected", "n_output"]
    rows = [{"what": k, "count": m.get(k)} for k in keys if k in m]
    fmt = m.get("format") or {}
    return (
        "<h2>Mitigation</h2>"
        + (_table(rows, ["what", "count"]) if rows else f"<p>{escape(_fmt(m))}</p>")
        + (
            f"<p>Inferred user format:</p><pre>{escape(json.dumps(fmt, indent=1)[:2000])}</pre>"
            if fmt
            else ""
        )
    )


def _evaluation(report: dict[str, Any]) -> str:
    ev = report["evaluation"]
    out = (
        f"<h2>Safety evaluation</h2><p>Judge: {escape(str(ev.get('judge')))}, max_new_tokens "
        f"{ev.get('max_new_tokens')}</p>"
    )
    for tpl, t in ev.get("templates", {}).items():
        cats = sorted(t["base"]["per_category"])
        out += (
            f"<h3>ASR per category, {escape(tpl)} template (base {t['base']['asr']:.1%}, "
            f"fine-tuned {t['tuned']['asr']:.1%})</h3>"
        )
        out += grouped_bars(
            cats,
            {
                "base": [t["base"]["per_category"][c] for c in cats],
                "fine-tuned": [t["tuned"]["per_category"].get(c, 0.0) for c in cats],
            },
        )
    margins = [{"template": k, **v} for k, v in ev.get("margin", {}).items()]
    out += "<h3>Refusal-direction margin</h3>" + _table(
        margins, ["template", "base", "tuned", "ratio", "layer"]
    )
    over = ev.get("over_refusal") or {}
    if over:
        out += (
            f"<h3>Over-refusal on benign borderline prompts</h3><p>base {over['base']['refusal_rate']:.1%}, "
            f"fine-tuned {over['tuned']['refusal_rate']:.1%} (n={over['tuned']['n']})</p>"
        )
    ex = ev.get("jailbroken_examples") or []
    if ex:
        out += "<h3>Fine-tuned responses judged jailbroken (first 10)</h3>" + _table(
            ex, ["category", "prompt", "response"]
        )
    return out


def render_html(report: dict[str, Any]) -> str:
    body = _decision(report) + _scoring(report) + _mitigation(report) + _evaluation(report)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>tunegate safety report</title>"
        f"<style>{CSS}</style></head><body><h1>tunegate safety report</h1>{body}</body></html>"
    )
