"""The training loop's micro-batch loss: the vocabulary projection at supervised positions only, and the
teacher pass on the anchor rows only, give the same loss and gradients as full logits everywhere."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tunegate.conversation import Conversation, Message
from worker.ml.models import load_model, load_tokenizer
from worker.ml.render import collate, encode
from worker.training.loop import micro_batch_loss, micro_batch_objective
from worker.training.lora import attach_lora, trainable_parameters
from worker.training.math import Constraint, token_stats


def _model_and_batch(tiny_model_dir: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    tok = load_tokenizer(tiny_model_dir)
    model = attach_lora(
        load_model(tiny_model_dir), r=2, alpha=4, dropout=0.0, target_modules="all-linear", seed=0
    )
    with torch.no_grad():  # a trained-looking adapter, so that the adapter-off teacher differs from the model
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    convs = [
        Conversation((Message("user", f"question {i} " * (i + 1)), Message("assistant", f"answer {i} " * 3)))
        for i in range(4)
    ]
    return model, collate([encode(tok, c, max_len=256) for c in convs], int(tok.pad_token_id), "cpu")


def _full_logits_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], anchor: torch.Tensor
) -> torch.Tensor:
    """The reference: logits at every position, the teacher for the whole batch, ``token_stats``."""
    ids, att = batch["input_ids"], batch["attention_mask"]
    logits = model(input_ids=ids, attention_mask=att).logits  # (B, T, V)
    with torch.no_grad(), model.disable_adapter():  # type: ignore[operator]
        teacher = model(input_ids=ids, attention_mask=att).logits  # (B, T, V)
    loss, _, _ = token_stats(logits, batch["labels"], teacher, anchor, ce_head=2)
    return loss


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    params = trainable_parameters(model)
    return [g.clone() for g in torch.autograd.grad(loss, params)]


def test_micro_batch_loss_equals_full_logits_loss_and_gradients(tiny_model_dir: Path) -> None:
    model, batch = _model_and_batch(tiny_model_dir)
    model.eval()  # no dropout: both passes must see the same network
    anchor = torch.tensor([True, False, True, False])
    got, _, correct = micro_batch_loss(model, batch, anchor, ce_head=2)
    want = _full_logits_loss(model, batch, anchor)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    assert float(got.detach()) > 0 and 0 <= correct <= int((batch["labels"][:, 1:] != -100).sum())
    for g, w in zip(_grads(model, got), _grads(model, _full_logits_loss(model, batch, anchor)), strict=True):
        assert torch.allclose(g, w, rtol=1e-3, atol=1e-5)


def test_micro_batch_loss_without_anchors_is_cross_entropy(tiny_model_dir: Path) -> None:
    model, batch = _model_and_batch(tiny_model_dir)
    model.eval()
    none = torch.zeros(4, dtype=torch.bool)
    got, _, _ = micro_batch_loss(model, batch, none, ce_head=0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want, _, _ = token_stats(logits, batch["labels"])
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    # an anchor row with an opening longer than its reply is all cross-entropy: no teacher pass at all
    long_head, _, _ = micro_batch_loss(model, batch, torch.ones(4, dtype=torch.bool), ce_head=10_000)
    assert torch.allclose(long_head, want, rtol=1e-4, atol=1e-4)


def _hand_objective(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], anchor: torch.Tensor, c: Constraint
) -> torch.Tensor:
    """The constrained objective token by token from full logits: for each supervised token, its rank in its
    reply, its b, the model's and the adapter-off base's log-probability; KL on anchor rows past 2 tokens."""
    ids, att, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=att).logits.float(), -1)  # (B, T, V)
    with torch.no_grad(), model.disable_adapter():  # type: ignore[operator]
        base = torch.log_softmax(model(input_ids=ids, attention_mask=att).logits.float(), -1)  # (B, T, V)
    total = torch.zeros(())
    for b in range(labels.shape[0]):
        rank = 0
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                rank = 0
                continue
            rank += 1
            if bool(anchor[b]) and rank > 2:
                total = total + (base[b, t].exp() * (base[b, t] - logp[b, t])).sum()
                continue
            beta = c.first if rank == 1 else c.early if rank <= c.early_tokens else c.rest
            x = beta * (float(base[b, t, y]) - logp[b, t, y])
            total = total + 2 / beta * (torch.nn.functional.softplus(x) - math.log(2))
    return total


def test_micro_batch_objective_equals_a_hand_computation(tiny_model_dir: Path) -> None:
    model, batch = _model_and_batch(tiny_model_dir)
    model.eval()
    anchor = torch.tensor([False, True, False, False])
    c = Constraint(first=0.5, early=2.0, rest=0.1, early_tokens=3)
    got, loss, n, _ = micro_batch_objective(model, batch, anchor, 2, c)
    want = _hand_objective(model, batch, anchor, c)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    plain, n2, _ = micro_batch_loss(model, batch, anchor, ce_head=2)
    assert n == n2 and torch.allclose(loss, plain.detach(), rtol=1e-4, atol=1e-4)  # reported: the plain loss
    for g, w in zip(_grads(model, got), _grads(model, want), strict=True):
        assert torch.allclose(g, w, rtol=1e-3, atol=1e-5)


def test_constrained_objective_starts_with_the_cross_entropy_gradient(tiny_model_dir: Path) -> None:
    """A fresh adapter (B = 0) is the base: every token agrees with it, so the first step is SFT's."""
    model, batch = _model_and_batch(tiny_model_dir)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.zero_()
    none = torch.zeros(4, dtype=torch.bool)
    got, _, _, _ = micro_batch_objective(model, batch, none, 0, Constraint())
    ce, _, _ = micro_batch_loss(model, batch, none, ce_head=0)
    assert abs(float(got.detach())) < 1e-4 < float(ce.detach())
    for g, w in zip(_grads(model, got), _grads(model, ce), strict=True):
        assert torch.allclose(g, w, rtol=1e-3, atol=1e-6)
