"""The ML stages on a CUDA device: the same results as on the CPU (``-m gpu``; skipped without CUDA).

Run on a machine with a GPU: ``scripts/test -m gpu tests/worker/test_cuda.py``. Each test compares the CUDA
path (batched exact scoring, bf16 autocast training, batched generation with refills, the early-exit hidden
states, the whole local pipeline) with the CPU path on the same tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _convs() -> list[Any]:
    from tunegate.conversation import Conversation, Message

    return [
        Conversation(
            (
                Message("user", f"How many apples are {i} and {i + 3}? Say it in words"),
                Message("assistant", a),
            ),
            line=i + 1,
        )
        for i, a in enumerate(["Seven apples in all.", "Nine.", "Sure: eleven apples, counted twice.", "13"])
    ]


def _models(tiny_model_dir: Path) -> tuple[Any, Any, Any]:
    from worker.ml.models import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    cpu = load_model(tiny_model_dir, "cpu", dtype=torch.float32)
    gpu = load_model(tiny_model_dir, "cuda", dtype=torch.float32)
    return tok, cpu, gpu


def test_batched_exact_scores_on_cuda_equal_the_cpu_hooks(tiny_model_dir: Path) -> None:
    from worker.ml.render import encode
    from worker.scoring.anchors import compute_anchors
    from worker.scoring.engine import SCORERS, Engine

    tok, cpu, gpu = _models(tiny_model_dir)
    for m in (cpu, gpu):
        m.requires_grad_(True)
    encoded = [encode(tok, c, max_len=2048) for c in _convs()]
    anchors = compute_anchors(cpu, tok, max_len=2048, with_direction=True)
    on_cpu = Engine(cpu, tok, anchors, SCORERS, batch_size=1, batched=False).score(encoded)
    engine = Engine(gpu, tok, anchors, SCORERS, batch_size=4)  # None: batches (ghost capture) on CUDA
    assert engine.batch_size == 4
    on_gpu = engine.score(encoded)
    for a, b in zip(on_cpu, on_gpu, strict=True):
        for s in ("representation", "gradient", "selfinf"):
            assert getattr(b, s) == pytest.approx(getattr(a, s), rel=2e-3, abs=1e-4), s


def test_training_in_bf16_on_cuda_follows_fp32_on_the_cpu(tiny_model_dir: Path) -> None:
    from worker.ml.render import collate, encode
    from worker.training.loop import micro_batch_loss
    from worker.training.lora import attach_lora

    tok, cpu, gpu = _models(tiny_model_dir)
    losses = []
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        peft_model = attach_lora(model, r=4, alpha=8, dropout=0.0, target_modules="all-linear", seed=0)
        batch = collate([encode(tok, c, max_len=2048) for c in _convs()], tok.pad_token_id, device)
        anchor = torch.tensor([False, True, False, True])
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss_sum, n, _ = micro_batch_loss(peft_model, batch, anchor, 2)
        loss_sum.backward()
        grads = [p.grad for p in peft_model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        losses.append(float(loss_sum) / n)
    assert losses[1] == pytest.approx(losses[0], rel=0.03)


def test_generation_and_hidden_states_on_cuda_equal_the_cpu(tiny_model_dir: Path) -> None:
    from tunegate.conversation import Message
    from worker.evaluation.generate import generate_all
    from worker.ml.lm import block_input
    from worker.ml.render import encode_prompt

    tok, cpu, gpu = _models(tiny_model_dir)
    ids = [
        encode_prompt(tok, [Message("user", c.messages[0].content * (i + 1))]) for i, c in enumerate(_convs())
    ]
    got = [generate_all(m, tok, ids, max_new_tokens=12, batch_size=2) for m in (cpu, gpu)]
    assert got[1] == got[0]
    x = torch.tensor([ids[0]])
    with torch.no_grad():
        h = [block_input(m, 1, input_ids=x.to(m.device)).cpu() for m in (cpu, gpu)]
    torch.testing.assert_close(h[1], h[0], rtol=1e-3, atol=1e-4)


def test_the_local_pipeline_runs_every_stage_on_cuda(
    tiny_model_dir: Path, tmp_path: Path, tunegate_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cli import app
    from tunegate.settings import reset_settings

    monkeypatch.setenv("TUNEGATE_DEVICE", "cuda")
    reset_settings()

    data = tmp_path / "ft.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} + {i}?"},
                {"role": "assistant", "content": str(2 * i)},
            ]
        }
        for i in range(12)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["finetune", str(data), "--model", str(tiny_model_dir), "--out", str(out), "--n-epochs", "1"]
    )
    assert res.exit_code in (0, 3), res.output
    for stage in ("score", "mitigate", "train", "evaluate", "gate"):
        assert (out / stage / "result.json").is_file()
    reset_settings()
