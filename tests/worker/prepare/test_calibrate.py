"""The unit-cost measurement runs on a real (tiny) model and leaves the model as it found it."""

from __future__ import annotations

from pathlib import Path

import torch

from worker.ml.models import load_model, load_tokenizer
from worker.prepare.calibrate import measure


def test_measure_times_training_and_decoding(tiny_model_dir: Path) -> None:
    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    u = measure(model, tok, "cpu", precision="fp32")
    assert u.precision == "fp32" and u.threads == torch.get_num_threads()
    assert 0 < u.train_token_s < 1 and u.fp32_token_s == u.train_token_s and 0 < u.decode_step_s < 10
    after = model.state_dict()
    assert set(after) == set(before)  # the LoRA layers were taken out again
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad and p.grad is not None for p in model.parameters())
