"""Batched greedy generation with left padding, a KV cache, early stopping and continuous batching.

Prompts are left-padded so every sequence's next token sits in the last column; the cache makes each new
token one (B, 1) forward. A sequence stops at end-of-turn, at ``max_new_tokens``, or as soon as
``settled(text)`` says its verdict cannot change any more (e.g. a refusal keyword appeared), and leaves the
batch (its rows of the KV cache are dropped). ``generate_all`` keeps the batch full: once half of it is free,
the next prompts (in length order) are prefilled and their cache rows joined to the running ones, left-padded
to a common length (padding is masked out, and every row keeps its own positions). A refusing model settles
most rows after a few tokens; without refills the rest of a batch decoded at batch 1 or 2.
Greedy decoding, so results are deterministic and comparable base vs tuned.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

SETTLE_EVERY = 4  # test ``settled`` when a row has this many more new tokens
REFILL_SHARE = 0.5  # prefill more prompts once this share of the batch is free


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


def _pad_to(t: Any, length: int, dim: int) -> Any:
    """``t`` left-padded with zeros along ``dim`` to ``length``."""
    import torch

    missing = length - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _joinable(cache: Any) -> bool:
    """Whether cache rows can be joined along the batch: plain per-layer key/value tensors (no sliding
    window or other per-cache state)."""
    from transformers.cache_utils import DynamicLayer

    layers: list[Any] = list(getattr(cache, "layers", None) or [])
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


@dataclass
class _Running:
    """The rows being decoded: their prompts, KV cache, attention mask (b, L), the position of each row's
    pending token (b, 1) and the pending tokens themselves (decided, not yet fed)."""

    rows: list[int] = field(default_factory=list)
    cache: Any = None
    mask: Any = None
    pos: Any = None
    pending: list[int] = field(default_factory=list)

    def join(self, other: _Running) -> None:
        import torch

        if not self.rows:
            self.rows, self.cache, self.mask, self.pos = other.rows, other.cache, other.mask, other.pos
            self.pending = other.pending
            return
        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat(
                [_pad_to(mine.keys, length, 2), _pad_to(theirs.keys, length, 2)]
            )  # (b,H,L,D)
            mine.values = torch.cat([_pad_to(mine.values, length, 2), _pad_to(theirs.values, length, 2)])
        self.mask = torch.cat([_pad_to(self.mask, length, 1), _pad_to(other.mask, length, 1)])  # (b, L)
        self.pos = torch.cat([self.pos, other.pos])
        self.rows += other.rows
        self.pending += other.pending

    def keep(self, keep: list[int]) -> None:
        """Only the rows at positions ``keep`` stay (their cache rows too)."""
        import torch

        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[r] for r in keep]
        self.pending = [self.pending[r] for r in keep]
        if not keep:
            self.cache = self.mask = self.pos = None
            return
        idx = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.pos = self.mask[idx], self.pos[idx]


class _Decoder:
    """Greedy decoding of many prompts through one running batch of at most ``batch_size`` rows."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        batch_size: int,
        settled: Callable[[str], bool] | None,
        refill: bool,
    ) -> None:
        self.model, self.tok, self.prompts = model, tokenizer, prompts
        self.max_new, self.batch_size, self.settled, self.refill = max_new_tokens, batch_size, settled, refill
        self.device = next(model.parameters()).device
        self.pad_id = int(tokenizer.pad_token_id)
        self.stop = _stop_ids(tokenizer)
        self.out: list[list[int]] = [[] for _ in prompts]
        self.finished = 0
        self.steps = 0  # decoding steps (one forward of the running batch each; prefills not counted)

    def run(self, order: Sequence[int], on_step: Callable[[], None] | None = None) -> list[str]:
        """Decode every prompt, starting them in ``order``; the decoded texts in the prompts' order."""
        import torch

        queue = deque(order)
        run = _Running()
        with torch.no_grad():
            while queue or run.rows:
                if queue and self._should_fill(run):
                    take = [queue.popleft() for _ in range(min(self.batch_size - len(run.rows), len(queue)))]
                    fresh = self._prefill(take)
                    run.join(fresh)
                    decided = dict(enumerate(fresh.pending, start=len(run.rows) - len(take)))
                else:
                    self._step(run)
                    decided = dict(enumerate(run.pending))
                    if on_step is not None:
                        on_step()
                going = {r for r, tok in decided.items() if self._record(run.rows[r], tok)}
                run.keep([r for r in range(len(run.rows)) if r in going or r not in decided])
        return [self.tok.decode(o, skip_special_tokens=True) for o in self.out]

    def _should_fill(self, run: _Running) -> bool:
        if not run.rows:
            return True
        free = self.batch_size - len(run.rows)
        return self.refill and free >= max(1, int(self.batch_size * REFILL_SHARE)) and _joinable(run.cache)

    def _prefill(self, take: list[int]) -> _Running:
        ids, mask = _left_pad([self.prompts[i] for i in take], self.pad_id, self.device)  # (b, T) each
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (b, T) positions ignoring left padding
        res = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,  # the prefill needs the last position's logits only, not (b, T, V)
        )
        first = res.logits[:, -1, :].argmax(-1).tolist()  # (b,)
        return _Running(list(take), res.past_key_values, mask, pos[:, -1:] + 1, first)

    def _step(self, run: _Running) -> None:
        import torch

        run.mask = torch.cat([run.mask, run.mask.new_ones((len(run.rows), 1))], dim=1)  # (b, L+1)
        res = self.model(
            input_ids=torch.tensor(run.pending, device=self.device).unsqueeze(1),  # (b, 1)
            attention_mask=run.mask,
            position_ids=run.pos,
            past_key_values=run.cache,
            use_cache=True,
        )
        run.cache = res.past_key_values
        run.pos = run.pos + 1
        run.pending = res.logits[:, -1, :].argmax(-1).tolist()  # (b,)
        self.steps += 1

    def _record(self, i: int, token: int) -> bool:
        """Add prompt ``i``'s new token; whether it goes on decoding."""
        if token in self.stop:
            return self._finish()
        self.out[i].append(int(token))
        n = len(self.out[i])
        if n >= self.max_new:
            return self._finish()
        if self.settled is not None and n % SETTLE_EVERY == 0:
            if self.settled(self.tok.decode(self.out[i], skip_special_tokens=True)):
                return self._finish()
        return True

    def _finish(self) -> bool:
        self.finished += 1
        return False

    def progress(self) -> float:
        """Share of the work done: finished prompts, plus each running prompt's share of its token budget."""
        running = sum(min(1.0, len(o) / self.max_new) for o in self.out) - self.finished
        return (self.finished + max(0.0, running)) / max(1, len(self.prompts))


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    settled: Callable[[str], bool] | None = None,
    on_tokens: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy continuations of one batch of prompt token ids (decoded, special tokens dropped).
    ``on_tokens(t)`` is told every ``SETTLE_EVERY`` decoding steps how many have run (progress bars)."""
    dec = _Decoder(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=max(1, len(prompts)),
        settled=settled,
        refill=False,
    )

    def step() -> None:
        # the prefill decided token 1; decoding step s decides token s + 1
        if on_tokens is not None and (dec.steps + 1) % SETTLE_EVERY == 0:
            on_tokens(dec.steps + 1)

    return dec.run(range(len(prompts)), step)


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
    refill: bool = True,
) -> list[str]:
    """Generate for many prompts, at most ``batch_size`` at a time, shortest prompts first (less padding).
    ``refill`` keeps the batch full as prompts finish (False: fixed batches, each decoded until its last
    prompt ends; for the benchmark). ``on_batch(done, total)`` follows finished prompts; ``on_progress``
    (fraction) moves within them too. Both are called every ``SETTLE_EVERY`` decoding steps and at the end."""
    if not prompts:
        return []
    dec = _Decoder(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        settled=settled,
        refill=refill,
    )

    def report() -> None:
        if on_batch is not None:
            on_batch(dec.finished, len(prompts))
        if on_progress is not None:
            on_progress(dec.progress())

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = dec.run(order, lambda: report() if dec.steps % SETTLE_EVERY == 0 else None)
    report()
    return out
