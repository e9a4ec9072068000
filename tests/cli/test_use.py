"""``tunegate export`` and ``tunegate chat`` on a tiny model and adapter."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from cli import app
from tests.cli.test_usage import FAILED, assert_one_line
from tests.utils.tiny_model import build_tiny_adapter


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("use") / "adapter", seed=7)


def invoke(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=stdin)


@pytest.mark.usefixtures("tunegate_home")
def test_export_copies_the_adapter(adapter: Path, tmp_path: Path) -> None:
    res = invoke("export", str(adapter), "--out", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    copied = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert copied == sorted(p.name for p in adapter.iterdir()) and "adapter_config.json" in copied


@pytest.mark.usefixtures("tunegate_home")
def test_export_merged_and_gguf_load(adapter: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from worker.ml.models import load_model

    out = tmp_path / "merged"
    res = invoke("export", str(adapter), "--out", str(out), "--merged", "--gguf", "--gguf-type", "f32")
    assert res.exit_code == 0, res.output
    gguf = out / "adapter.gguf"
    assert f"gguf: {gguf}" in res.stdout and f"merged model: {out}" in res.stdout
    assert json.loads((out / "tunegate_source.json").read_text())["base"] == str(tiny_model_dir)
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        want = load_model(out)(input_ids=ids).logits
        back = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf.name, dtype=torch.float32).eval()
        torch.testing.assert_close(back(input_ids=ids).logits, want, atol=1e-4, rtol=1e-4)
    only = tmp_path / "gguf-only"
    res = invoke("export", str(adapter), "--out", str(only), "--gguf")
    assert res.exit_code == 0, res.output
    assert [p.name for p in only.iterdir()] == ["adapter.gguf"]  # the merge in between is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gguf-only", "merged"]


@pytest.mark.usefixtures("tunegate_home")
def test_export_refuses_gguf_of_another_architecture(
    adapter: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    other = shutil.copytree(tiny_model_dir, tmp_path / "other")
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    res = invoke("export", str(adapter), "--out", str(tmp_path / "o"), "--gguf", "--model", str(other))
    assert_one_line(res, FAILED, "llama architecture only; this model is 'gpt2'")
    assert not list((tmp_path / "o").glob("*"))


def _job(adapter: Path, model: str, status: str = "succeeded", **fields: object) -> str:
    from tests.worker.jobfactory import make_job

    return make_job(model, status=status, adapter_path=str(adapter), **fields)


@pytest.mark.usefixtures("migrated_home")
def test_export_a_released_job_from_the_database(adapter: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    job = _job(adapter, str(tiny_model_dir), released=True)
    res = invoke("export", job, "--out", str(tmp_path / "m"), "--merged")
    assert res.exit_code == 0, res.output
    source = json.loads((tmp_path / "m" / "tunegate_source.json").read_text())
    assert source == {"adapter": job, "base": str(tiny_model_dir)}


@pytest.mark.usefixtures("migrated_home")
def test_export_refuses_jobs_whose_adapter_may_not_leave(adapter: Path, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    cases = [
        (_job(adapter, "m", released=False, status="failed"), "is not released (status failed)"),
        (_job(adapter, "m", released=True, revoked_at=now), "was revoked by the provider"),
        (_job(adapter, "m", released=True, model_deleted_at=now), "was deleted"),
        (_job(tmp_path / "gone", "m", released=True), "adapter files of job"),
        ("ftjob-nope", "no job ftjob-nope in the configured database"),
    ]
    for job, message in cases:
        assert_one_line(invoke("export", job, "--out", str(tmp_path / "x")), FAILED, message)
        assert not (tmp_path / "x").exists()


def _expected_replies(model: Any, tok: Any, turns: list[list[str]], max_new_tokens: int) -> list[str]:
    """What the chat must answer: greedy replies through the chat template, each with its history."""
    from tunegate.conversation import Message
    from worker.evaluation.generate import generate_batch
    from worker.ml.render import encode_prompt

    replies = []
    for conversation in turns:
        history: list[Message] = []
        for text in conversation:
            history.append(Message("user", text))
            ids = encode_prompt(tok, history)
            reply = generate_batch(model, tok, [ids], max_new_tokens=max_new_tokens)[0].strip()
            history.append(Message("assistant", reply))
            replies.append(reply)
    return replies


@pytest.fixture(scope="module")
def merged(tiny_model_dir: Path, adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with the adapter merged: unlike the bare random model (which answers blank lines), its
    greedy replies are visible text that changes with the conversation."""
    from worker.ml.export import merge

    return merge(tiny_model_dir, adapter, tmp_path_factory.mktemp("chat") / "merged", {})


@pytest.mark.usefixtures("tunegate_home")
def test_chat_answers_piped_lines_with_history_and_reset(merged: Path) -> None:
    from worker.ml.models import load_model, load_tokenizer

    stdin = "Hello there\nWhat is 42?\n\n/reset\nWhat is 42?\n/exit\nnever read\n"
    res = invoke("chat", str(merged), "--max-new-tokens", "5", stdin=stdin)
    assert res.exit_code == 0, res.output
    turns = [["Hello there", "What is 42?"], ["What is 42?"]]
    want = _expected_replies(load_model(merged), load_tokenizer(merged), turns, 5)
    assert all(want) and want[1] != want[2]  # the history changes the reply; /reset drops it
    assert res.stdout == "".join(f"{r}\n" for r in want)
    assert "(conversation cleared)" in res.stderr


@pytest.mark.usefixtures("tunegate_home")
def test_chat_with_an_adapter_and_a_system_message(tiny_model_dir: Path, adapter: Path) -> None:
    from peft import PeftModel

    from tunegate.conversation import Message
    from worker.evaluation.generate import generate_batch
    from worker.ml.models import load_model, load_tokenizer
    from worker.ml.render import encode_prompt

    args = ["chat", str(tiny_model_dir), "--adapter", str(adapter), "--max-new-tokens", "4"]
    res = invoke(*args, "--system", "Be brief.", stdin="Hi")  # a last line without newline, then EOF
    assert res.exit_code == 0, res.output
    model = PeftModel.from_pretrained(load_model(tiny_model_dir), str(adapter)).eval()
    tok = load_tokenizer(tiny_model_dir)
    ids = encode_prompt(tok, [Message("system", "Be brief."), Message("user", "Hi")])
    reply = generate_batch(model, tok, [ids], max_new_tokens=4)[0].strip()
    assert reply and res.stdout == reply + "\n"
