"""The LM pieces equal what the model's full forward computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from worker.ml.lm import block_input, decoder_hidden, head_logits
from worker.ml.models import load_model
from worker.training.lora import attach_lora


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    torch.manual_seed(0)
    return load_model(tiny_model_dir)


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, vocab, (3, 9), generator=torch.Generator().manual_seed(1))  # (B, T)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_block_input_is_the_full_forwards_hidden_state(model: Any, layer: int) -> None:
    batch = _batch(model.config.vocab_size)
    with torch.no_grad():
        full = model(**batch, output_hidden_states=True).hidden_states[layer]  # (B, T, H)
        early = block_input(model, layer, **batch)
    assert early.shape == full.shape
    torch.testing.assert_close(early, full)


def test_block_input_at_the_top_is_the_final_normed_state(model: Any) -> None:
    batch = _batch(model.config.vocab_size)
    n = model.config.num_hidden_layers
    with torch.no_grad():
        full = model(**batch, output_hidden_states=True).hidden_states[n]
        torch.testing.assert_close(block_input(model, n, **batch), full)


def test_block_input_stops_below_the_layer(model: Any) -> None:
    """The blocks above the wanted one never run (that is the saving)."""
    ran: list[int] = []
    layers = model.get_decoder().layers
    handles = [m.register_forward_hook(lambda *_a, i=i: ran.append(i)) for i, m in enumerate(layers)]
    try:
        with torch.no_grad():
            block_input(model, 1, **_batch(model.config.vocab_size))
    finally:
        for h in handles:
            h.remove()
    assert ran == [0]


def test_decoder_hidden_and_head_give_the_models_logits_plain_and_peft(model: Any) -> None:
    batch = _batch(model.config.vocab_size)
    peft_model = attach_lora(model, r=4, alpha=8, dropout=0.0, target_modules="all-linear", seed=0)
    try:
        with torch.no_grad():
            for m in (model, peft_model):
                want = m(**batch).logits  # (B, T, V)
                got = head_logits(m, decoder_hidden(m, batch["input_ids"], batch["attention_mask"]))
                torch.testing.assert_close(got, want)
    finally:
        peft_model.unload()
