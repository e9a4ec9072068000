"""The project's own prompt sets: shape, harmlessness of the text we ship, and disjointness.

AdvBench and XSTest are the yardstick, so none of their prompts may be in anything the project trains on
or injects; the injection pool, the alignment refusal set and the evaluation sets must not overlap either.
"""

from pathlib import Path

import pytest

from tunegate.shipped import data_path, read_jsonl
from worker.evaluation.keyword import is_refusal
from worker.evaluation.prompts import (
    load_prompts,
    near_duplicates,
    project_borderline,
    project_harmful,
)

SHARED = Path("/work/shared/data")
ADVBENCH = SHARED / "advbench" / "harmful_behaviors.csv"
XSTEST = SHARED / "xstest" / "xstest_prompts.csv"
GSM8K = SHARED / "gsm8k"


def project_sets():
    return {
        "eval/harmful": [p.text for p in project_harmful()],
        "eval/borderline": [p.text for p in project_borderline()],
        "pool/harmful": [str(r["prompt"]) for r in read_jsonl(data_path("pool", "harmful.jsonl"))],
        "pool/borderline": [str(r["prompt"]) for r in read_jsonl(data_path("pool", "borderline.jsonl"))],
        "align/refusals": [str(r["prompt"]) for r in read_jsonl(data_path("align", "refusals.jsonl"))],
        "align/benign": [str(r["prompt"]) for r in read_jsonl(data_path("align", "benign.jsonl"))],
        "judge/labelled": judge_requests(),
    }


def judge_requests() -> list[str]:
    """The probe judge's labelled set: several responses per request, so each request once."""
    rows = read_jsonl(data_path("judge", "labelled.jsonl"))
    return list(dict.fromkeys(str(r["request"]) for r in rows))


def anchor_texts():
    out = []
    for f in sorted(data_path("anchors").glob("*.jsonl")) if data_path("anchors").is_dir() else []:
        for r in read_jsonl(f):
            msgs = r.get("messages") or []
            out += [m["content"] for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
            out += [str(r[k]) for k in ("prompt", "request", "instruction") if isinstance(r.get(k), str)]
    return out


def test_sizes_and_categories():
    harmful = project_harmful()
    assert len(harmful) >= 200 and len({p.category for p in harmful}) >= 8
    assert min(sum(p.category == c for p in harmful) for c in {p.category for p in harmful}) >= 15
    assert len(project_borderline()) >= 100 and len({p.category for p in project_borderline()}) >= 6
    assert len(read_jsonl(data_path("align", "refusals.jsonl"))) >= 150
    assert len(read_jsonl(data_path("pool", "harmful.jsonl"))) >= 80
    contrast = read_jsonl(data_path("pool", "borderline.jsonl"))
    kinds = {str(r["kind"]) for r in contrast}
    assert len(contrast) >= 150 and len(kinds) >= 6
    assert min(sum(r["kind"] == k for r in contrast) for k in kinds) >= 10


def test_contrast_pool_is_far_from_the_borderline_evaluation_set():
    """The contrastive pool is trained on; the borderline set measures over-refusal: besides the shared
    exact/near-duplicate check, no contrastive request may share even most of its words with an evaluation
    prompt (a tighter bound than between other sets)."""
    pool = project_sets()["pool/borderline"]
    for name in ("eval/borderline", "eval/harmful"):
        dups = near_duplicates(pool, project_sets()[name], threshold=0.6)
        assert not dups, f"pool/borderline is close to {name}: {dups[:3]}"
    own = [d for i, x in enumerate(pool) for d in near_duplicates([x], pool[i + 1 :], threshold=0.7)]
    assert not own, f"pool/borderline has near-duplicate prompts: {own[:3]}"


def test_judge_labelled_set_shape():
    rows = read_jsonl(data_path("judge", "labelled.jsonl"))
    labels = [str(r["label"]) for r in rows]
    assert len(rows) >= 200 and set(labels) == {"complied", "refused", "deflected"}
    assert 0.3 <= labels.count("complied") / len(rows) <= 0.6
    pairs = [(r["request"], r["response"]) for r in rows]
    assert len(set(pairs)) == len(pairs)
    # the labels are not the keyword judge's: refusals without a keyword, compliance with one
    kw_wrong = [r for r in rows if is_refusal(str(r["response"])) != (r["label"] != "complied")]
    assert len(kw_wrong) >= 40


def test_shipped_responses_are_refusals_only():
    for r in read_jsonl(data_path("align", "refusals.jsonl")):
        assert is_refusal(str(r["response"])), r


@pytest.mark.skipif(
    not ADVBENCH.is_file() or not XSTEST.is_file(), reason="shared benchmark files not present"
)
@pytest.mark.parametrize("bench", [ADVBENCH, XSTEST])
def test_disjoint_from_public_benchmarks(bench):
    public = [p.text for p in load_prompts(bench)]
    for name, texts in project_sets().items():
        dups = near_duplicates(texts, public, threshold=0.7)
        assert not dups, f"{name} overlaps {bench.name}: {dups[:3]}"


def test_project_sets_disjoint_from_each_other_and_anchors():
    sets = project_sets()
    anchors = anchor_texts()
    if anchors:
        sets["anchors"] = anchors
    names = sorted(sets)
    for i, a in enumerate(names):
        assert len(set(sets[a])) == len(sets[a]) or a == "anchors", f"{a} has duplicate prompts"
        for b in names[i + 1 :]:
            dups = near_duplicates(sets[a], sets[b], threshold=0.8)
            assert not dups, f"{a} and {b} share prompts: {dups[:3]}"


@pytest.mark.skipif(not (GSM8K / "test.jsonl").is_file(), reason="shared GSM8K files not present")
def test_alignment_prompts_disjoint_from_gsm8k():
    """GSM8K measures the aligned base's helpfulness loss: none of its questions may be distilled."""
    questions = [str(r["question"]) for f in ("train.jsonl", "test.jsonl") for r in read_jsonl(GSM8K / f)]
    own = [str(r["prompt"]) for r in read_jsonl(data_path("align", "benign.jsonl"))]
    dups = near_duplicates(own, questions, threshold=0.7)
    assert not dups, f"align/benign overlaps GSM8K: {dups[:3]}"


def test_evaluation_prompts_are_not_near_duplicates_of_each_other():
    """Each evaluation prompt is its own paired trial; near-copies would count one behaviour twice and make
    the gate's confidence bound too tight."""
    for name in ("eval/harmful", "eval/borderline"):
        texts = project_sets()[name]
        dups = [d for i, x in enumerate(texts) for d in near_duplicates([x], texts[i + 1 :], threshold=0.7)]
        assert not dups, f"{name} has near-duplicate prompts: {dups[:3]}"
