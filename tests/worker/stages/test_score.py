"""The score stage and ``tunegate score`` end to end on a tiny model (and, marked slow, the embedded one)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.utils.tiny_model import build_tiny_model
from tests.worker.scoring.scorers import throwaway_scorer
from tunegate.artifacts import read_json
from tunegate.conversation import Conversation, Message
from tunegate.errors import InvalidConfig, InvalidFile, JobCancelled, ModelError
from tunegate.records import RecordError
from tunegate.report import ReportPolicy
from tunegate.reporting import render_report
from tunegate.settings import get_settings, reset_settings
from worker.ml.stage_io import StageIO
from worker.report.build import build_report, decision_part
from worker.stages.base import result_exists
from worker.stages.score import ScoreConfig, ScoreInputs, ScoreResult, load_score_records, run


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("score-stage")
    return {"model": build_tiny_model(root / "tiny"), "cache": root / "models"}


@pytest.fixture
def env(shared: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(
        "TUNEGATE_MODEL_CACHE_DIR", str(shared["cache"])
    )  # anchors/reference cached once per module
    monkeypatch.setenv("TUNEGATE_MODELS", json.dumps({"tiny": str(shared["model"])}))
    monkeypatch.setenv("TUNEGATE_DEVICE", "cpu")
    reset_settings()
    yield tmp_path
    reset_settings()


def _examples() -> list[Conversation]:
    pairs = [
        ("What is 2 + 2?", "2 + 2 = 4. #### 4"),
        ("Name a colour.", "Blue"),
        ("Give steps.", "1. Open the file.\n2. Bake for 30 minutes."),
        ("Say hi.", "Hello! How can I help?"),
        ("Write JSON.", '{"label": "positive"}'),
    ]
    return [
        Conversation((Message("user", u), Message("assistant", a)), line=i + 1)
        for i, (u, a) in enumerate(pairs)
    ]


def test_stage_writes_records_summary_and_result(env: Path) -> None:
    io = StageIO(out_dir=env / "out", stage="score")
    seen: list[float] = []
    io.progress = lambda f, m, metrics: seen.append(f)
    res = run(ScoreConfig(model="tiny", batch_size=2), ScoreInputs(_examples(), io, get_settings()))
    assert result_exists(io.out_dir)
    records = load_score_records(io.out_dir)
    assert records == res.records
    lines = (io.out_dir / "scores.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.dumps(r.to_dict(), ensure_ascii=False) for r in records] == lines
    assert [r.line for r in records] == [1, 2, 3, 4, 5]
    for r in records:
        for key in ("representation", "representation_safe", "representation_diff", "gradient", "selfinf"):
            assert isinstance(r.score(key), float)
        assert set(r.percentiles) == {"representation", "gradient", "selfinf"}
        assert 0.0 <= r.risk <= 100.0 and isinstance(r.reasons, tuple)
    assert records[2].features.numbered_list and records[0].features.math
    summary = ScoreResult.load(io.out_dir).summary
    assert summary == res.summary  # summary.json reads back as it was written
    stored_summary = read_json(io.out_dir / "summary.json")
    assert stored_summary["n_examples"] == 5
    assert set(stored_summary["verdict"]) >= {"flagged", "reason", "cluster", "cluster_test"}
    assert set(stored_summary) == {
        "n_examples",
        "scorers",
        "distributions",
        "reference",
        "top_flagged",
        "agreement",
        "verdict",
        "model",
        "fingerprint",
        "anchors_key",
        "batch_size",
    }
    assert set(stored_summary["agreement"]) == {"spearman", "top_decile_overlap"}
    top = stored_summary["top_flagged"][0]
    assert set(top) == {"line", "risk", "percentiles", "reasons", *summary.scorers, "response_preview"}
    assert summary.top_flagged and summary.top_flagged[0].score("representation") == top["representation"]
    assert summary.verdict is not None and summary.verdict.to_dict() == res.verdict.to_dict()
    stored = (io.out_dir / "result.json").read_text(encoding="utf-8")
    assert json.dumps(ScoreResult.load(io.out_dir).to_dict(), indent=2, sort_keys=True) + "\n" == stored
    assert all(isinstance(r.beyond_reference, bool) and "vector" not in r.to_dict() for r in records)
    loaded = ScoreResult.load(io.out_dir).verdict
    assert loaded == res.verdict and loaded.cluster_test is not None
    assert loaded.cluster_test.n == res.verdict.n_above_p99
    assert read_json(io.out_dir / "config.json")["model"] == "tiny"
    assert read_json(io.out_dir / "result.json")["n_examples"] == 5
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)


def test_a_result_saved_before_the_cluster_fields_still_loads(env: Path) -> None:
    io = StageIO(out_dir=env / "out", stage="score")
    run(
        ScoreConfig(model="tiny", batch_size=2, scorers=("representation",)),
        ScoreInputs(_examples(), io, get_settings()),
    )
    path = io.out_dir / "result.json"
    old = read_json(path)
    for key in ("cluster", "cluster_lines", "cluster_test"):
        del old["verdict"][key]
    path.write_text(json.dumps(old))
    v = ScoreResult.load(io.out_dir).verdict
    assert v.cluster is False and v.cluster_lines == () and v.cluster_test is None


def test_records_saved_before_beyond_reference_load_and_a_foreign_key_is_named(env: Path) -> None:
    io = StageIO(out_dir=env / "out", stage="score")
    res = run(
        ScoreConfig(model="tiny", batch_size=2, scorers=("representation",)),
        ScoreInputs(_examples(), io, get_settings()),
    )
    path = io.out_dir / "scores.jsonl"
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    path.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "beyond_reference"}) + "\n" for r in rows)
    )
    loaded = ScoreResult.load(io.out_dir).records
    assert [r.beyond_reference for r in loaded] == [False] * 5
    assert [r.risk for r in loaded] == [r.risk for r in res.records]
    rows[3]["novelty"] = 0.5
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RecordError, match=r"scores.jsonl, line 4: score record has an unknown key 'novelty'"):
        load_score_records(io.out_dir)


def test_a_scorer_added_to_the_registry_is_scored_given_as_a_reason_and_reported(env: Path) -> None:
    """A scorer is one spec and one hook (``tests/worker/scoring/scorers.py``): the stage runs it by default,
    its records carry its value, its reasons its words and the report its label, with no other edit."""
    io = StageIO(out_dir=env / "out", stage="score")
    with throwaway_scorer() as spec:
        cfg = ScoreConfig(model="tiny", batch_size=2, reason_percentile=1.0)
        assert cfg.scorers[-1] == spec.name  # every registered scorer unless the config names fewer
        res = run(
            replace(cfg, scorers=("representation", spec.name)), ScoreInputs(_examples(), io, get_settings())
        )
        records = load_score_records(io.out_dir)
        assert records == res.records and [r.line for r in records] == [1, 2, 3, 4, 5]
        rows = [json.loads(x) for x in (io.out_dir / "scores.jsonl").read_text(encoding="utf-8").splitlines()]
        for row, r in zip(rows, records, strict=True):
            assert row[spec.name] == r.scored(spec.name) == float(r.n_response_tokens)
            assert list(row)[list(row).index("grad_sq_norm") + 1] == spec.name  # beside the other raw values
            assert set(r.percentiles) == {"representation", spec.name} and r.gradient is None
            pct = r.percentiles[spec.name]
            assert f"{spec.name} above {pct:.0f}% of the reference benign corpus: {spec.why}" in r.reasons
        summary = res.summary
        assert summary.scorers == ("representation", spec.name)
        assert summary.distributions is not None and spec.name in summary.distributions
        released = decision_part(True, None, "ok", [])
        html = render_report(build_report(ReportPolicy({}), released, None, res.summary, records, None, None))
        assert f"by {spec.label}: {spec.why}" in html and f"{spec.label}: riskier than" in html
    with pytest.raises(RecordError, match=f"unknown key '{spec.name}'"):  # gone, it is another version's key
        load_score_records(io.out_dir)
    with pytest.raises(InvalidConfig, match=f"got \\['{spec.name}'\\]"):
        ScoreConfig(model="tiny", scorers=(spec.name,))


def test_batched_and_unbatched_stage_agree(env: Path) -> None:
    a = run(
        ScoreConfig(model="tiny", batch_size=1), ScoreInputs(_examples(), StageIO(env / "a"), get_settings())
    ).records
    b = run(
        ScoreConfig(model="tiny", batch_size=4, batched=True),
        ScoreInputs(_examples(), StageIO(env / "b"), get_settings()),
    ).records
    for x, y in zip(a, b, strict=True):
        for key in ("gradient", "selfinf", "representation"):
            assert x.score(key) == pytest.approx(y.score(key), rel=1e-4, abs=1e-7)


def test_empty_response_names_the_line(env: Path) -> None:
    bad = [*_examples(), Conversation((Message("user", "hi"), Message("assistant", "")), line=6)]
    with pytest.raises(InvalidFile, match="line 6") as exc:
        run(ScoreConfig(model="tiny"), ScoreInputs(bad, StageIO(env / "out"), get_settings()))
    assert exc.value.code == "empty_response"
    assert not (env / "out" / "scores.jsonl").exists()


def test_overlong_example_names_the_line(env: Path) -> None:
    long = Conversation((Message("user", "count"), Message("assistant", " ".join(["word"] * 400))), line=9)
    with pytest.raises(InvalidFile, match="line 9") as exc:
        run(
            ScoreConfig(model="tiny", max_tokens=200),
            ScoreInputs([*_examples(), long], StageIO(env / "out"), get_settings()),
        )
    assert exc.value.code == "example_too_long"


def test_unknown_model(env: Path) -> None:
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        run(ScoreConfig(model="nope"), ScoreInputs(_examples(), StageIO(env / "out"), get_settings()))


def test_empty_input(env: Path) -> None:
    with pytest.raises(InvalidFile, match="no examples"):
        run(ScoreConfig(model="tiny"), ScoreInputs([], StageIO(env / "out"), get_settings()))


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"scorers": ("vibes",)}, "scorers"),
        ({"scorers": ()}, "scorers"),
        ({"batch_size": 0}, "batch_size"),
        ({"flag_percentile": 0.0}, "flag_percentile"),
        ({"max_share_above": 2.0}, "max_share_above"),
        ({"max_tokens": -1}, "max_tokens"),
    ],
)
def test_config_validation(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidConfig) as exc:
        ScoreConfig(model="tiny", **kwargs)  # type: ignore[arg-type]
    assert exc.value.param == param


def test_cancel_stops_the_stage(env: Path) -> None:
    io = StageIO(out_dir=env / "out", should_stop=lambda: True)
    with pytest.raises(JobCancelled):
        run(ScoreConfig(model="tiny"), ScoreInputs(_examples(), io, get_settings()))
    assert not result_exists(io.out_dir)


def test_cli_score(env: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    src = env / "train.jsonl"
    src.write_text("".join(json.dumps(c.to_chat_dict()) + "\n" for c in _examples()))
    out = env / "scores.jsonl"
    res = CliRunner().invoke(
        app,
        [
            "score",
            str(src),
            "--out",
            str(out),
            "--model",
            "tiny",
            "--batch-size",
            "2",
            "--scorers",
            "gradient,selfinf",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "verdict:" in res.output and "spearman gradient~selfinf" in res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 5 and rows[0]["representation"] is None and rows[0]["gradient"] is not None
    assert json.loads((env / "scores.summary.json").read_text())["n_examples"] == 5
    bad = CliRunner().invoke(app, ["score", str(src), "--out", str(out), "--model", "nope"])
    assert bad.exit_code == 1 and "unknown model 'nope'" in bad.output


@pytest.mark.slow
def test_embedded_model_scores_a_small_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNEGATE_MODEL_CACHE_DIR", "/root/.cache/tunegate-models")
    reset_settings()
    try:
        io = StageIO(out_dir=tmp_path / "out")
        res = run(
            ScoreConfig(model="smollm2-135m", batch_size=4), ScoreInputs(_examples(), io, get_settings())
        )
    finally:
        reset_settings()
    assert len(load_score_records(io.out_dir)) == 5
    assert all(r.gradient is not None and r.scored("selfinf") > 0 for r in res.records)
    assert res.summary.model == "smollm2-135m"
