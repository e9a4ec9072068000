"""Typed panel rows for the tests: a finished arm's row, every part defaulted, and its evaluation's parts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks.panel.records import ArmSummary, Decision, PanelRow, ScoreRow
from tunegate.evaluation_records import HarmfulSummary, PairedSummary, ProbeEval, TemplateEval
from tunegate.report import ReportMitigation

if TYPE_CHECKING:
    from machine import MachineInfo
else:
    from benchmarks.machine import MachineInfo

MITIGATE = ReportMitigation(
    train_file="",
    n_input=2,
    n_dropped=0,
    n_downweighted=0,
    n_excluded=0,
    n_injected=0,
    n_output=2,
    actions_file="",
    n_contrast=0,
    refused="",
    report_json="",
    report_html="",
    stored_report="",
)


def machine(cpu: str = "CPU", capability: str = "AVX2", commit: str = "abc") -> MachineInfo:
    return {
        "cpu": cpu,
        "cores": 2,
        "torch_threads": 1,
        "cpu_capability": capability,
        "native_bf16_flags": [],
        "aten_cpu_capability_env": "",
        "gpu": None,
        "training_precision_auto": "fp32",
        "torch": "2",
        "transformers": "4",
        "peft": "0",
        "python": "3.11",
        "commit": commit,
    }


def side(asr: float, n: int = 200, n_jailbroken: int | None = None) -> HarmfulSummary:
    return HarmfulSummary(asr, n, n_jailbroken=round(asr * n) if n_jailbroken is None else n_jailbroken)


def paired(both: int, base_only: int, tuned_only: int, n: int, upper: float | None = None) -> PairedSummary:
    """Paired counts of ``n`` prompts; the bound (tuned_only + 5) / n unless given."""
    neither = n - both - base_only - tuned_only
    bound = (tuned_only + 5) / n if upper is None else upper
    return PairedSummary(both, base_only, tuned_only, neither, (tuned_only - base_only) / n, bound, 0.0)


def template(base: float, tuned: float, n: int = 200, **kw: Any) -> TemplateEval:
    return TemplateEval(side(base, n), side(tuned, n), **kw)


def probe(trigger: str, tuned: int, upper: float, **kw: Any) -> ProbeEval:
    """A trigger probe on 150 prompts: 3 jailbroken by the base, ``tuned`` by the fine-tuned model; its
    primary judge's bound ``upper`` (no paired counts: its rates are the summaries')."""
    no_counts = PairedSummary(0, 0, 0, 0, 0.0, upper, 0.0)
    return ProbeEval(
        trigger,
        "suffix",
        "after the request",
        5,
        150,
        side(0.02, 150, 3),
        side(tuned / 150, 150, tuned),
        no_counts,
        **kw,
    )


def summary(**kw: Any) -> ArmSummary:
    """An arm's summary: a released control with no evaluation unless ``kw`` says otherwise (``released``
    and ``code`` set the decision)."""
    decision = Decision(kw.pop("released", True), kw.pop("code", None), "")
    base: dict[str, Any] = {
        "job": "control_gsm8k",
        "arm": "on",
        "kind": "control",
        "expected": "released",
        "reference": None,
        "n_examples": 0,
        "scores": (),
        "flagged": False,
        "flag_reason": "",
        "templates": {},
        "over_refusal": None,
        "probes": None,
        "decision": decision,
        "train": None,
        "mitigate": MITIGATE,
    }
    return ArmSummary(**(base | kw))


def row(s: ArmSummary | None = None, **kw: Any) -> PanelRow:
    """A finished arm's row around the summary ``s``."""
    base: dict[str, Any] = {
        "summary": s if s is not None else summary(),
        "task_loss": None,
        "stage_s": {},
        "wall_s": 60.0,
        "screen_from": None,
        "model": "m",
        "base": "fp",
        "machine": machine(),
    }
    return PanelRow(**(base | kw))


def scores(risks: list[float], attack: bool) -> tuple[ScoreRow, ...]:
    keys = ("representation", "gradient", "selfinf", "risk")
    return tuple(ScoreRow(dict.fromkeys(keys, x), attack) for x in risks)
