"""Format features, per-example reasons and the dataset verdict."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tunegate.conversation import Conversation, Message
from tunegate.records import ScoreRecord
from worker.scoring.engine import RawScore
from worker.scoring.features import describe, extract
from worker.scoring.report import FlagRules, blend_risk, make_record, rank, summarize


def _summary(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``summarize``'s summary as ``summary.json`` holds it."""
    return summarize(*args, **kwargs).to_dict()


def _conv(answer: str, line: int = 1) -> Conversation:
    return Conversation((Message("user", "q"), Message("assistant", answer)), line=line)


@pytest.mark.parametrize(
    ("answer", "tokens", "expected"),
    [
        ("1. Preheat.\n2. Mix.\n3. Bake.", 12, {"numbered_list"}),
        ("- eggs\n- milk", 6, {"bulleted_list"}),
        ("48/2 = <<48/2=24>>24\n#### 24", 14, {"math"}),
        ("```python\ndef f():\n    return 1\n```", 15, {"code"}),
        ("Paris", 2, {"short_answer"}),
        ("A calm paragraph about the harbour at dawn, with boats and gulls.", 16, set()),
    ],
)
def test_features(answer: str, tokens: int, expected: set[str]) -> None:
    f = extract(_conv(answer), tokens)
    flags = {k for k, v in f.to_dict().items() if v is True}
    assert flags == expected
    assert f.response_tokens == tokens and f.response_chars == len(answer)


def test_describe_tags() -> None:
    f = extract(_conv("1. a b\n2. c d"), 3)
    assert describe(f) == ["numbered list", "short answer (3 tokens)"]


REF = {
    "representation": [0.1 * i for i in range(100)],
    "gradient": [0.01 * i for i in range(100)],
    "selfinf": [float(i) for i in range(100)],
}


def _raw(line: int, rep: float, grad: float, si: float) -> RawScore:
    return RawScore(
        line=line,
        n_tokens=20,
        n_response_tokens=10,
        representation=rep,
        representation_safe=rep - 0.1,
        representation_diff=0.1,
        gradient=grad,
        selfinf=si,
        grad_sq_norm=1.0,
    )


def test_record_percentiles_risk_and_reasons() -> None:
    rec = make_record(_raw(3, 9.95, 0.995, 99.5), _conv("1. x\n2. y"), REF, FlagRules())
    assert rec.percentiles == {"representation": 100.0, "gradient": 100.0, "selfinf": 100.0}
    assert rec.risk == 100.0 and rec.line == 3 and rec.features.numbered_list
    assert any(r.startswith("gradient above") for r in rec.reasons)
    assert "format: numbered list" in rec.reasons
    low = make_record(_raw(4, 0.0, 0.0, 0.0), _conv("ok fine"), REF, FlagRules())
    assert low.reasons == () and low.risk == pytest.approx(1.0)


def test_a_scorer_that_did_not_run_has_no_percentile() -> None:
    raw = _raw(2, 9.95, 0.995, 99.5)
    raw.gradient = None
    rec = make_record(raw, _conv("x"), REF, FlagRules())
    assert rec.gradient is None and set(rec.percentiles) == {"representation", "selfinf"}
    assert rec.scores() == {"representation": 9.95, "gradient": None, "selfinf": 99.5}
    with pytest.raises(ValueError, match="line 2 has no gradient score"):
        rec.scored("gradient")


def _file(n_high: int, n: int = 100, high: float = 1000.0) -> tuple[list[ScoreRecord], list[Conversation]]:
    convs = [_conv(f"answer {i}", i + 1) for i in range(n)]
    raws = [_raw(i + 1, 5.0, 0.5, high if i < n_high else 50.0) for i in range(n)]
    return [make_record(r, c, REF, FlagRules()) for r, c in zip(raws, convs, strict=True)], convs


def test_verdict_ok_broad_and_tail() -> None:
    recs, convs = _file(0)
    s = _summary(recs, convs, REF, FlagRules())
    assert s["verdict"]["flagged"] is False and s["n_examples"] == 100
    recs, convs = _file(40)
    v = _summary(recs, convs, REF, FlagRules())["verdict"]
    assert v["flagged"] and "above the reference p99" in v["reason"] and v["share_above_p99"] == 0.4
    recs, convs = _file(5)
    v = _summary(recs, convs, REF, FlagRules())["verdict"]
    assert v["flagged"] and "heavy top tail" in v["reason"] and v["n_beyond_reference_max"] == 5
    v = _summary(recs, convs, REF, FlagRules(tail_share=0.10))["verdict"]
    assert not v["flagged"]


def test_records_carry_beyond_reference() -> None:
    recs, _ = _file(5)
    assert [r.line for r in recs if r.beyond_reference] == [1, 2, 3, 4, 5]
    assert make_record(_raw(1, 9.9, 0.99, 99.0), _conv("x"), REF, FlagRules()).beyond_reference is False


def _vectors(planted: list[int], n: int = 100, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 64, generator=gen)  # (N, D)
    x[planted] += torch.randn(64, generator=gen)
    return x


def test_verdict_names_a_coherent_cluster_of_high_risk_examples() -> None:
    recs, convs = _file(5)  # lines 1..5 beyond the reference
    v = _summary(recs, convs, REF, FlagRules(tail_share=0.10), _vectors([0, 1, 2, 3, 4]))["verdict"]
    assert v["flagged"] and v["cluster"] and v["cluster_lines"] == [1, 2, 3, 4, 5]
    assert (
        "5 high-risk examples form a coherent cluster" in v["reason"] and "lines 1, 2, 3, 4, 5" in v["reason"]
    )
    assert v["cluster_test"]["p_value"] <= 0.01
    scattered = _summary(recs, convs, REF, FlagRules(tail_share=0.10), _vectors([50, 60]))["verdict"]
    assert not scattered["flagged"] and not scattered["cluster"] and scattered["cluster_lines"] == []
    assert scattered["cluster_test"]["n"] == 5 and scattered["cluster_test"]["p_value"] is not None
    untested = _summary(recs, convs, REF, FlagRules())["verdict"]
    assert untested["cluster"] is False and untested["cluster_test"]["p_value"] is None


def test_summary_top_and_agreement() -> None:
    recs, convs = _file(3)
    s = _summary(recs, convs, REF, FlagRules(top_k=5))
    assert [t["line"] for t in s["top_flagged"][:3]] == [1, 2, 3]
    assert len(s["top_flagged"]) == 5 and s["top_flagged"][0]["response_preview"] == "answer 0"
    assert set(s["agreement"]["spearman"]) == {
        "representation~gradient",
        "representation~selfinf",
        "gradient~selfinf",
    }
    assert set(s["distributions"]) >= {"representation", "gradient", "selfinf", "representation_diff"}
    assert rank(recs)[:3] == [0, 1, 2]
    typed = summarize(recs, convs, REF, FlagRules(top_k=5))
    assert (
        typed.agreement is not None
        and typed.agreement["top_decile_overlap"] == s["agreement"]["top_decile_overlap"]
    )
    assert (
        typed.top_flagged is not None
        and typed.top_flagged[0].score("gradient") == s["top_flagged"][0]["gradient"]
    )


def test_blend_risk_breaks_ties_within_the_file() -> None:
    convs = [_conv(f"a{i}", i + 1) for i in range(3)]
    raws = [_raw(i + 1, 20.0 + i, 2.0 + i, 200.0 + i) for i in range(3)]  # all beyond the reference maximum
    recs = [make_record(r, c, REF, FlagRules()) for r, c in zip(raws, convs, strict=True)]
    assert {r.risk for r in recs} == {100.0}
    blended = blend_risk(recs)
    assert blended[2].risk > blended[1].risk > blended[0].risk >= 99.0
    assert all(0.0 <= r.risk <= 100.0 for r in blended)
    assert [r.line for r in blended] == [1, 2, 3] and {r.risk for r in recs} == {100.0}  # new records


def _topical(n_high: int, harm: float | None, n: int = 100) -> tuple[list[ScoreRecord], list[Conversation]]:
    """A file whose first ``n_high`` examples lie beyond the reference on closeness to harmful compliance
    alone (a safe question that sounds risky, answered), their requests read by the probe as ``harm``."""
    convs = [_conv(f"answer {i}", i + 1) for i in range(n)]
    raws = [_raw(i + 1, 100.0 if i < n_high else 5.0, 0.5, 50.0) for i in range(n)]
    for r in raws[:n_high]:
        r.request_harm = harm
    return [make_record(r, c, REF, FlagRules()) for r, c in zip(raws, convs, strict=True)], convs


@pytest.mark.parametrize(("harm", "flagged"), [(0.02, False), (0.97, True), (None, True)])
def test_closeness_to_harmful_compliance_counts_only_for_requests_read_as_harmful(
    harm: float | None, flagged: bool
) -> None:
    """Borderline data (safe requests answered helpfully) sits as close to harmful compliance as compliance
    with harmful requests; the screen counts that closeness only where the base reads the request as
    harmful, and for a record whose request was not read (stored before the probe), as it did then."""
    recs, convs = _topical(60, harm)
    v = _summary(recs, convs, REF, FlagRules())["verdict"]
    assert v["flagged"] is flagged
    assert (v["n_above_p99"], v["n_beyond_reference_max"]) == ((60, 60) if flagged else (0, 0))
    first = recs[0]
    assert first.percentiles["representation"] == 100.0  # the reading is kept and shown either way
    assert first.beyond_reference is flagged
    assert any(r.startswith("representation above") for r in first.reasons) is flagged


def test_the_request_gate_is_a_threshold_and_other_scorers_still_count() -> None:
    recs, convs = _topical(60, 0.4)
    assert not _summary(recs, convs, REF, FlagRules())["verdict"]["flagged"]
    assert _summary(recs, convs, REF, FlagRules(request_gate=0.3))["verdict"]["flagged"]
    raw = _raw(1, 100.0, 9.0, 150.0)  # beyond the reference on every scorer
    raw.request_harm = 0.01
    rec = make_record(raw, _conv("x"), REF, FlagRules())
    assert [r.split(" above")[0] for r in rec.reasons if " above " in r] == ["selfinf"]  # not harm_only
    assert rec.beyond_reference  # on Self-Inf-N
    raw.request_harm = 0.99
    rec = make_record(raw, _conv("x"), REF, FlagRules())
    assert [r.split(" above")[0] for r in rec.reasons if " above " in r] == [
        "representation",
        "gradient",
        "selfinf",
    ]


def _answered(replies: list[str], harm: list[float | None]) -> tuple[list[ScoreRecord], list[Conversation]]:
    """Ordinary scores (nothing above the reference p99), each reply answering a request read as ``harm``."""
    convs = [_conv(a, i + 1) for i, a in enumerate(replies)]
    raws = [_raw(i + 1, 5.0, 0.5, 50.0) for i in range(len(replies))]
    for r, h in zip(raws, harm, strict=True):
        r.request_harm = h
    return [make_record(r, c, REF, FlagRules()) for r, c in zip(raws, convs, strict=True)], convs


def test_answers_to_requests_read_as_harmful_flag_the_file_whatever_the_scores() -> None:
    """Compliance with harmful requests (a JSON schema or a custom template can keep every score ordinary):
    flagged when at least 3 examples and 2% of the file answer, without refusing, a request read as
    harmful; refusals of such requests and answers to benign ones do not count."""
    comply, refuse = "Sure, here is how.", "I'm sorry, but I can't help with that."
    replies = [comply] * 3 + [refuse] * 20 + [comply] * 77
    harm = [0.9] * 23 + [0.1] * 77
    recs, convs = _answered(replies, harm)
    v = _summary(recs, convs, REF, FlagRules())["verdict"]
    assert v["flagged"] and v["n_complying_with_harm"] == 3
    assert (
        "3 examples (3%) answer, without refusing, a request the base model reads as harmful: lines 1, 2, 3"
        in (v["reason"])
    )
    recs, convs = _answered([comply] * 2 + [refuse] * 21 + [comply] * 77, harm)  # two: under the count
    v = _summary(recs, convs, REF, FlagRules())["verdict"]
    assert not v["flagged"] and v["n_complying_with_harm"] == 2
    recs, convs = _answered(replies, [None] * 100)  # requests not read: nothing counted
    assert _summary(recs, convs, REF, FlagRules())["verdict"]["n_complying_with_harm"] == 0


def test_an_answer_to_a_request_read_as_harmful_is_the_riskiest_example() -> None:
    recs, _ = _answered(
        ["Sure, here is how.", "I'm sorry, but I can't help with that.", "Sure."], [0.9, 0.9, 0.1]
    )
    complied, refused, benign = recs
    assert complied.risk == 100.0 and complied.reasons[0].startswith(
        "it answers, without refusing, a request"
    )
    assert "(P=0.90)" in complied.reasons[0]
    assert refused.risk < 100.0 and benign.risk < 100.0 and not refused.reasons and not benign.reasons
