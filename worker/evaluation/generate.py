"""Batched greedy generation with left padding, a KV cache and early stopping.

Prompts are left-padded so every sequence's next token sits in the last column; the cache makes each new
token one (B, 1) forward. A sequence stops at end-of-turn, at ``max_new_tokens``, or as soon as
``settled(text)`` says its verdict cannot change any more (e.g. a refusal keyword appeared), and leaves the
batch (its rows of the KV cache are dropped), so the rest decode at a smaller batch; the batch stops when
every sequence has stopped. Greedy decoding, so results are deterministic and comparable base vs tuned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

SETTLE_EVERY = 4  # decode and test ``settled`` every this many new tokens


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    import torch

    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[i, T - len(p) :] = 1
    return ids.to(device), mask.to(device)  # (B, T), (B, T)


def _stop_ids(tokenizer: Any) -> set[int]:
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    for tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return ids


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    settled: Callable[[str], bool] | None = None,
    on_tokens: Callable[[int], None] | None = None,
    shrink: bool = True,
) -> list[str]:
    """Greedy continuations of one batch of prompt token ids (decoded, special tokens dropped).
    ``on_tokens(t)`` is told every ``SETTLE_EVERY`` decoding steps how many have run (progress bars);
    ``shrink=False`` keeps finished rows in the batch (the old behaviour; for the benchmark)."""
    import torch

    device = next(model.parameters()).device
    pad_id = int(tokenizer.pad_token_id)
    ids, mask = _left_pad(prompts, pad_id, device)
    stop = _stop_ids(tokenizer)
    B = ids.size(0)
    done = [False] * B
    out: list[list[int]] = [[] for _ in range(B)]
    rows = list(range(B))  # the prompt each row of the running batch belongs to
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T) positions ignoring left padding
    past, step_ids, step_pos = None, ids, pos
    with torch.no_grad():
        for t in range(max_new_tokens):
            res = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_pos,
                past_key_values=past,
                use_cache=True,
            )
            past = res.past_key_values
            nxt = res.logits[:, -1, :].argmax(-1).tolist()  # (b,)
            for r, i in enumerate(rows):
                if done[i]:  # only with shrink=False: a finished row still in the batch
                    continue
                if nxt[r] in stop:
                    done[i] = True
                else:
                    out[i].append(int(nxt[r]))
            if (t + 1) % SETTLE_EVERY == 0:
                if settled is not None:
                    for i in rows:
                        if not done[i] and settled(tokenizer.decode(out[i], skip_special_tokens=True)):
                            done[i] = True
                if on_tokens is not None:
                    on_tokens(t + 1)
            keep = [r for r, i in enumerate(rows) if not done[i]]
            if not keep:
                break
            if shrink and len(keep) < len(rows):  # finished rows leave the batch: the rest decode smaller
                idx = torch.tensor(keep, device=device)
                past.batch_select_indices(idx)
                mask, step_pos = mask[idx], step_pos[idx]
                rows, nxt = [rows[r] for r in keep], [nxt[r] for r in keep]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)  # (b, T+t+1)
            step_ids = torch.tensor(nxt, device=device).unsqueeze(1)  # (b, 1)
            step_pos = step_pos[:, -1:] + 1  # (b, 1)
    return [tokenizer.decode(o, skip_special_tokens=True) for o in out]


def generate_all(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    settled: Callable[[str], bool] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    on_progress: Callable[[float], None] | None = None,
    shrink: bool = True,
) -> list[str]:
    """Generate for many prompts; batches are formed from length-sorted prompts to limit padding.
    ``on_batch(done, total)`` follows finished prompts; ``on_progress(fraction)`` moves within batches too."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    n = max(1, len(order))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]

        def within(t: int, start: int = start, size: int = len(idx)) -> None:
            if on_progress is not None:
                on_progress((start + size * min(1.0, t / max_new_tokens)) / n)

        outs = generate_batch(
            model,
            tokenizer,
            [prompts[i] for i in idx],
            max_new_tokens=max_new_tokens,
            settled=settled,
            on_tokens=within,
            shrink=shrink,
        )
        for i, text in zip(idx, outs, strict=True):
            texts[i] = text
        if on_batch is not None:
            on_batch(min(start + batch_size, len(order)), len(order))
        if on_progress is not None:
            on_progress(min(start + batch_size, len(order)) / n)
    return texts
