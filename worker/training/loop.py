"""A small LoRA training loop (no HF Trainer): micro-batches, gradient accumulation, per-epoch checkpoints.

The loss is the mean cross-entropy over the supervised tokens of one optimizer step (all its micro-batches
together), so gradient accumulation gives the same update as one big batch. Labels come from
``worker.ml.render.encode``: only trained assistant turns (``weight`` 1) carry loss. Sequences marked
``anchor`` take KL to the base model (the adapter switched off) at those positions instead. With a
``constraint`` (``worker.training.math.Constraint``) the other tokens are trained by the token-wise
constrained objective against the same adapter-off base instead of plain cross-entropy (the reported
``train_loss`` stays the cross-entropy/KL). The vocabulary projection (the LM head, 49k logits a position on
SmolLM2) runs only at supervised positions. With a ``bistate`` (``worker.training.math.Bistate``, Lisa) the
``alignment`` examples train in blocks of steps of their own, alternating with the user's, each step's
gradient plus the proximal term's pull toward the weights of the last switch between the two.

With validation examples, each epoch ends with their mean loss and token accuracy (no gradients, eval mode):
``valid_loss`` and ``valid_mean_token_accuracy`` on the epoch's last step, in its progress event and in its
checkpoint. After each checkpoint but the last, ``io.checkpoint_reached`` pauses the job if asked to.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.ml.lm import decoder_hidden, head_logits
from worker.ml.precision import resolve as resolve_precision
from worker.ml.render import Encoded, collate
from worker.ml.stage_io import StageIO
from worker.training.checkpoint import latest_checkpoint, restore_checkpoint, save_checkpoint
from worker.training.dataparallel import Shard
from worker.training.lora import trainable_parameters
from worker.training.math import (
    Bistate,
    Constraint,
    add_proximal_grad,
    bistate_steps,
    epoch_order,
    lr_at,
    objective_stats,
    proximal_value,
    reply_rank,
    selected_stats,
    step_groups,
    supervised_positions,
    token_betas,
)

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)
ONE = Shard(0, 1)  # a single process


@dataclass(frozen=True)
class LoopConfig:
    n_epochs: int
    micro_batch: int
    grad_accum: int
    learning_rate: float
    seed: int
    warmup_fraction: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto: by the hardware (worker/ml/precision.py); bf16 | fp32 force it
    anchor_ce_head: int = 0  # anchor sequences keep cross-entropy on this many opening tokens
    constraint: Constraint | None = None  # the constrained objective on the non-anchor tokens (None: CE)
    bistate: Bistate | None = None  # Lisa's alternating states for the alignment examples (None: mixed in)


@dataclass
class LoopResult:
    steps: int = 0
    epochs: int = 0
    resumed_from_epoch: int = 0
    trained_tokens: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


Step = tuple[bool, list[list[int]]]  # (an alignment state's step?, its micro-batches of example indices)


def epoch_steps(n_user: int, n_align: int, cfg: LoopConfig, epoch: int) -> list[Step]:
    """One epoch's optimizer steps over the user's examples (indices 0..n_user-1) and the alignment ones
    after them: ``bistate_steps`` with a ``bistate`` (the user's steps alone when there are no alignment
    ones), else all of them shuffled together (user steps)."""
    if cfg.bistate is None:
        order = epoch_order(n_user + n_align, cfg.seed, epoch)
        return [(False, g) for g in step_groups(order, cfg.micro_batch, cfg.grad_accum)]
    b = cfg.bistate
    return bistate_steps(n_user, n_align, cfg.seed, epoch, cfg.micro_batch, cfg.grad_accum, b.rounds)


Proximal = tuple[list[Any], float]  # (the trainable weights at the last switch of state, rho)


def _optimizer_step(
    model: Any,
    opt: Any,
    data: Sequence[Encoded],
    group: list[list[int]],
    pad_id: int,
    cfg: LoopConfig,
    device: str,
    shard: Shard,
    proximal: Proximal | None = None,
) -> dict[str, float]:
    """One optimizer step over a group of micro-batches (this process's share of its examples, the
    gradients summed across the shard's processes, then the ``proximal`` term's, which every process adds
    alike); returns loss and token accuracy (and the proximal term's value, with one)."""
    import torch

    n_tok = sum(data[i].n_response_tokens for mb in group for i in mb) or 1
    mine = shard.take([i for mb in group for i in mb])
    kind = "cuda" if device.startswith("cuda") else "cpu"
    use_bf16 = resolve_precision(cfg.precision, device) == "bf16"
    autocast = torch.autocast(kind, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    opt.zero_grad(set_to_none=True)
    totals = torch.zeros(2, dtype=torch.float64)  # (loss, correct) over this process's share
    for start in range(0, len(mine), cfg.micro_batch):
        mb = mine[start : start + cfg.micro_batch]
        batch = collate([data[i] for i in mb], pad_id, device)
        anchor = torch.tensor([data[i].anchor for i in mb])  # (B,)
        with autocast:
            objective, loss_sum, _, correct = micro_batch_objective(
                model, batch, anchor, cfg.anchor_ce_head, cfg.constraint
            )
        (objective / n_tok).backward()
        totals += torch.tensor([float(loss_sum), correct], dtype=torch.float64)
    params = trainable_parameters(model)
    for p in params:
        if p.grad is None:  # a share without examples still joins the sum
            p.grad = torch.zeros_like(p)
    shard.sum_([p.grad for p in params] + [totals])
    metrics = {"train_loss": float(totals[0]) / n_tok, "train_mean_token_accuracy": float(totals[1]) / n_tok}
    if proximal is not None:
        point, rho = proximal
        metrics["proximal"] = proximal_value(params, point, rho)
        add_proximal_grad(params, point, rho)
    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    opt.step()
    return metrics


def _evaluate(
    model: Any, valid: Sequence[Encoded], pad_id: int, cfg: LoopConfig, device: str
) -> dict[str, float]:
    """Mean loss and token accuracy over the supervised tokens of ``valid`` (eval mode, no gradients)."""
    import torch

    kind = "cuda" if device.startswith("cuda") else "cpu"
    use_bf16 = resolve_precision(cfg.precision, device) == "bf16"
    autocast = torch.autocast(kind, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    loss_total, n_total, correct_total = 0.0, 0, 0
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(valid), cfg.micro_batch):
                batch = collate(list(valid[i : i + cfg.micro_batch]), pad_id, device)
                with autocast:
                    no_anchor = torch.zeros(len(batch["labels"]), dtype=torch.bool)  # (B,)
                    loss_sum, n, correct = micro_batch_loss(model, batch, no_anchor, 0)
                loss_total += float(loss_sum)
                n_total += n
                correct_total += correct
    finally:
        model.train()
    n_total = n_total or 1
    return {"valid_loss": loss_total / n_total, "valid_mean_token_accuracy": correct_total / n_total}


def micro_batch_loss(model: Any, batch: dict[str, Tensor], anchor: Any, ce_head: int) -> tuple[Any, int, int]:
    """Summed loss (with grad), supervised token count and argmax hits of one micro-batch: cross-entropy,
    or KL to the adapter-off base on anchor rows past their first ``ce_head`` tokens (``token_stats``'s
    loss), with the vocabulary projection only at the supervised positions (about half of a batch's)."""
    mask, kl, pred = _supervised_logits(model, batch, anchor, ce_head)
    teacher = _base_logits(model, batch, kl) if bool(kl.any()) else None  # (K, V)
    return selected_stats(pred, batch["labels"][:, 1:][mask], teacher, kl[mask])


def _supervised_logits(
    model: Any, batch: dict[str, Tensor], anchor: Any, ce_head: int
) -> tuple[Any, Any, Any]:
    """(mask, kl) of ``supervised_positions`` (B, T-1) each, and the model's logits (N, V) at the masked
    positions only (the vocabulary projection skips the rest)."""
    mask, kl = supervised_positions(batch["labels"], anchor, ce_head)  # (B, T-1) each
    hidden = decoder_hidden(model, batch["input_ids"], batch["attention_mask"])  # (B, T, H)
    return mask, kl, head_logits(model, hidden[:, :-1][mask])  # (N, V)


def micro_batch_objective(
    model: Any, batch: dict[str, Tensor], anchor: Any, ce_head: int, constraint: Constraint | None
) -> tuple[Any, Any, int, int]:
    """(objective to minimise, with grad; the reported loss, detached; supervised token count; argmax hits).
    Without a ``constraint`` both are ``micro_batch_loss``'s loss. With one, the tokens that take no KL are
    trained by the constrained objective against the adapter-off base, one no-grad pass over the whole
    micro-batch that also gives the anchor rows' teacher."""
    if constraint is None:
        loss, n, correct = micro_batch_loss(model, batch, anchor, ce_head)
        return loss, loss.detach(), n, correct
    import torch

    mask, kl, pred = _supervised_logits(model, batch, anchor, ce_head)
    gold, use_kl = batch["labels"][:, 1:][mask], kl[mask]  # (N,) each
    base = _base_logits(model, batch, mask).float()  # (N, V)
    ref_logp = torch.log_softmax(base, -1).gather(1, gold[:, None]).squeeze(1)  # (N,)
    beta = token_betas(reply_rank(mask)[mask], constraint).to(pred.device)  # (N,)
    return objective_stats(pred, gold, base[use_kl], use_kl, ref_logp, beta)


def _base_logits(model: Any, batch: dict[str, Tensor], where: Any) -> Any:
    """The frozen base's logits (K, V) at the K positions ``where`` (B, T-1) marks, in row-major order: the
    same peft model with its adapter switched off, run on the rows that need it only."""
    import torch

    rows = where.any(1).nonzero().flatten()  # (A,)
    part = {k: batch[k][rows] for k in ("input_ids", "attention_mask")}
    with torch.no_grad(), model.disable_adapter():
        hidden = decoder_hidden(model, part["input_ids"], part["attention_mask"])  # (A, T, H)
        return head_logits(model, hidden[:, :-1][where[rows]])  # (K, V)


def train_loop(
    model: Any,
    data: Sequence[Encoded],
    pad_id: int,
    cfg: LoopConfig,
    io: StageIO,
    checkpoint_dir: Path,
    valid: Sequence[Encoded] = (),
    shard: Shard = ONE,
    alignment: Sequence[Encoded] = (),
) -> LoopResult:
    """Train ``model`` (a peft-wrapped LM) on ``data``; resumes from the latest complete checkpoint, which is
    reported to ``io.on_checkpoint`` again (the callback is idempotent). ``valid``: the validation examples
    measured at each epoch's end. ``shard``: this process's place among data-parallel ones (each keeps its
    own checkpoints and io). ``alignment``: the examples of ``cfg.bistate``'s alignment state (mixed into
    ``data`` without one). Raises ``JobPaused`` after a checkpoint when a pause was requested."""
    on_checkpoint = io.on_checkpoint
    import torch

    device = str(next(model.parameters()).device)
    params = trainable_parameters(model)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    n_user = len(data)
    data = [*data, *alignment]
    total = len(epoch_steps(n_user, len(alignment), cfg, 0)) * cfg.n_epochs
    out = LoopResult()
    start_epoch = 0
    latest = latest_checkpoint(checkpoint_dir)
    if latest is not None:
        ck = restore_checkpoint(latest, model, opt)
        start_epoch, out.steps, out.resumed_from_epoch = ck.epoch, ck.step, ck.epoch
        out.history = list(ck.history)
        log.info("resuming training from %s (epoch %d, step %d)", latest, ck.epoch, ck.step)
        if on_checkpoint is not None:  # its record may have failed after it was saved (the database away)
            on_checkpoint(
                {"step_number": ck.step, "epoch": ck.epoch, "metrics": ck.metrics, "path": str(ck.path)}
            )
    model.train()
    rho = cfg.bistate.rho if cfg.bistate is not None and alignment else 0.0
    for epoch in range(start_epoch, cfg.n_epochs):
        # an epoch starts in the user state, the last one having ended in the alignment state: the switch
        # is here, so a resumed run takes the same proximal point (the checkpoint's weights)
        state, point = False, [p.detach().clone() for p in params] if rho else []
        for aligned, group in epoch_steps(n_user, len(alignment), cfg, epoch):
            if aligned != state and rho:
                state, point = aligned, [p.detach().clone() for p in params]
            for pg in opt.param_groups:
                pg["lr"] = lr_at(out.steps, total, cfg.learning_rate, cfg.warmup_fraction)
            prox = (point, rho) if rho else None
            metrics = _optimizer_step(model, opt, data, group, pad_id, cfg, device, shard, prox)
            out.steps += 1
            out.history.append({"step": out.steps, **metrics})
            io.step(
                out.steps / total,
                f"epoch {epoch + 1}/{cfg.n_epochs} step {out.steps}/{total}",
                step=out.steps,
                **metrics,
            )
        if valid and out.history:
            scores = _evaluate(model, valid, pad_id, cfg, device)
            out.history[-1].update(scores)
            io.step(
                out.steps / total, f"epoch {epoch + 1}/{cfg.n_epochs} validation", step=out.steps, **scores
            )
        ck = save_checkpoint(
            checkpoint_dir,
            model,
            opt,
            epoch=epoch + 1,
            step=out.steps,
            metrics=out.history[-1] if out.history else {},
            history=out.history,
        )
        if on_checkpoint is not None:
            on_checkpoint(
                {"step_number": ck.step, "epoch": ck.epoch, "metrics": ck.metrics, "path": str(ck.path)}
            )
        if epoch + 1 < cfg.n_epochs:
            io.checkpoint_reached(f"after epoch {epoch + 1}/{cfg.n_epochs} (step {out.steps})")
    model.eval()
    out.epochs = cfg.n_epochs
    out.trained_tokens = sum(len(e) for e in data) * cfg.n_epochs
    return out
