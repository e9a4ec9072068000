"""The scoring engine: one forward and (when a gradient scorer is asked for) one backward per example.

From that single pass come all the scores (the scorers are ``tunegate.scorers.SCORERS``, each computed by its
hook in ``worker.scoring.scorers.HOOKS`` from the pass):

- representation: max cosine of the final-norm last-token hidden state to the harmful anchors (and to the
  safe anchors, and their difference: the bi-directional variant);
- gradient: ⟨g/‖g‖, d⟩ with the full-model gradient g of the mean response loss;
- selfinf: Self-Inf-N = log(‖g‖² + 1) + log(L + 1), L the supervised token count.

A backward pass runs when some scorer asked for needs the gradient (``ScorerSpec.needs_gradient``), the
anchors' direction is loaded when one needs it (``needs_direction``).

Batches of similar length (sorted, right-padded) go through ``GhostCapture`` (exact per-example statistics);
batch size 1, or a model the batched path cannot attribute exactly, uses per-parameter hooks. Both paths
accumulate in fp32 and never materialise a flat per-example gradient.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import torch

from tunegate import schema
from tunegate.jsontypes import JsonObject
from tunegate.records import RAW_FIELDS, extra_names
from tunegate.scorers import SCORERS, needs_direction, needs_gradient
from worker.ml.render import Encoded, collate
from worker.scoring.anchors import AnchorFeatures
from worker.scoring.forward import States, features, forward
from worker.scoring.ghost import GhostCapture, UnsupportedModel
from worker.scoring.hooks import GradStatsHooks
from worker.scoring.scorers import HOOKS, Pass

log = logging.getLogger(__name__)


@dataclass
class RawScore:
    """One example's raw values (``tunegate.records.ScoreRecord``'s, whose fields these are: a registered
    scorer with no typed field in ``extra``)."""

    line: int
    n_tokens: int  # sequence length
    n_response_tokens: int  # supervised tokens (L)
    representation: float | None = None
    representation_safe: float | None = None
    representation_diff: float | None = None
    request_harm: float | None = None
    gradient: float | None = None
    selfinf: float | None = None
    grad_sq_norm: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
    # the final hidden state projected to PROJECTION_DIM dims (``project``): for the file's cluster test only,
    # never saved with the record
    vector: list[float] | None = field(default=None, repr=False)

    def value(self, name: str) -> float | None:
        """The raw value ``name`` (None: not scored)."""
        return cast(float | None, getattr(self, name)) if name in RAW_FIELDS else self.extra.get(name)

    def put(self, values: dict[str, float]) -> None:
        """Record a scorer hook's values: a typed field's in it, a registered scorer's other values in
        ``extra``; anything else is refused, naming it."""
        for name, v in values.items():
            if name in RAW_FIELDS:
                setattr(self, name, v)
            elif name in extra_names():
                self.extra[name] = v
            else:
                raise ValueError(f"a scorer's hook gave {name!r}, no registered scorer's value or companion")

    def scores(self) -> dict[str, float | None]:
        """Each registered scorer's raw value (None: it did not run)."""
        return {s: self.value(s) for s in SCORERS}

    def to_dict(self) -> JsonObject:
        """As a score record writes its raw values: each typed field, then each of ``extra`` as a key of its
        own (the vector is never written)."""
        out = schema.write(replace(self, vector=None, extra={}))
        del out["vector"], out["extra"]
        return {**out, **self.extra}


PROJECTION_DIM = 64


def projection(dim: int, k: int = PROJECTION_DIM, seed: int = 0) -> torch.Tensor:
    """A fixed Gaussian projection (dim, k) scaled by 1/√k (cosines survive, Johnson-Lindenstrauss); the
    identity when ``dim <= k``."""
    if dim <= k:
        return torch.eye(dim)
    gen = torch.Generator().manual_seed(seed)
    out: torch.Tensor = torch.randn(dim, k, generator=gen) / k**0.5
    return out


def length_batches(encoded: Sequence[Encoded], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (stable sort, so the order is deterministic)."""
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


class Engine:
    """Scores encoded examples against precomputed anchor features."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        anchors: AnchorFeatures,
        scorers: Collection[str],
        batch_size: int = 8,
        batched: bool | None = None,
    ) -> None:
        """``batched``: gradient scorers in length-sorted batches (ghost capture) or one example at a time
        (hooks). None picks by device: batches on CUDA; one at a time on CPU, where the benchmark
        (docs/benchmarks.md) measured the per-parameter hooks faster than per-example statistics of a batch.
        """
        unknown = set(scorers) - set(SCORERS)
        if unknown:
            raise ValueError(f"unknown scorers: {sorted(unknown)}")
        no_hook = sorted(set(scorers) - set(HOOKS))
        if no_hook:
            raise ValueError(f"scorers with no engine hook (worker.scoring.scorers.HOOKS): {no_hook}")
        self.model, self.tokenizer, self.anchors = model, tokenizer, anchors
        self.scorers = tuple(s for s in SCORERS if s in scorers)
        self.need_grad = needs_gradient(self.scorers)
        self.device = next(model.parameters()).device
        self.direction = self._direction_on_device() if needs_direction(self.scorers) else None
        if batched is None:
            batched = self.device.type == "cuda"
        use_batches = not self.need_grad or (batched and batch_size > 1 and self._ghost_ok())
        self.batch_size = batch_size if use_batches else 1
        self._proj: torch.Tensor | None = None

    def project(self, h: torch.Tensor) -> list[float]:
        """(C,) hidden state -> its fixed random projection (≤ PROJECTION_DIM floats)."""
        if self._proj is None or self._proj.shape[0] != h.shape[-1]:
            self._proj = projection(h.shape[-1]).to(h.device)
        return [float(v) for v in (h.float() @ self._proj).cpu()]  # (C,) @ (C, k) -> (k,)

    def _direction_on_device(self) -> dict[str, torch.Tensor]:
        if self.anchors.direction is None:
            raise ValueError("the gradient scorer needs anchor features computed with the gradient direction")
        return {k: v.to(self.device) for k, v in self.anchors.direction.items()}

    def _ghost_ok(self) -> bool:
        try:
            GhostCapture(self.model, self.direction)
        except UnsupportedModel as exc:
            log.warning("batched exact scoring unavailable (%s); scoring one example at a time", exc)
            return False
        return True

    def score(
        self, encoded: Sequence[Encoded], progress: Callable[[int, int], None] | None = None
    ) -> list[RawScore]:
        out: list[RawScore | None] = [None] * len(encoded)
        done = 0
        for idx in length_batches(encoded, self.batch_size):
            for i, rs in zip(idx, self._score_batch([encoded[i] for i in idx]), strict=True):
                out[i] = rs
            done += len(idx)
            if progress is not None:
                progress(done, len(encoded))
        return [r for r in out if r is not None]

    def _score_batch(self, batch: list[Encoded]) -> list[RawScore]:
        inputs = collate(batch, self.tokenizer.pad_token_id, self.device)
        if not self.need_grad:
            with torch.no_grad():
                states = features(self.model, inputs)
            return [self._rep(e, states, i, None) for i, e in enumerate(batch)]
        if len(batch) == 1 and self.batch_size == 1:
            return [self._one_with_hooks(batch[0], inputs)]
        with GhostCapture(self.model, self.direction) as cap:
            losses, states = forward(self.model, inputs)
            losses.sum().backward()
            stats = [cap.example_stats(i, len(e)) for i, e in enumerate(batch)]
        return [self._rep(e, states, i, s) for i, (e, s) in enumerate(zip(batch, stats, strict=True))]

    def _one_with_hooks(self, enc: Encoded, inputs: dict[str, torch.Tensor]) -> RawScore:
        self.model.zero_grad(set_to_none=True)  # hooks see p.grad after accumulation: start from nothing
        hooks = GradStatsHooks(self.model, self.direction)
        try:
            losses, states = forward(self.model, inputs)
            losses.sum().backward()
            stats = hooks.result()
        finally:
            hooks.remove()
            self.model.zero_grad(set_to_none=True)
        return self._rep(enc, states, 0, stats)

    def _rep(self, enc: Encoded, states: States, i: int, stats: tuple[float, float] | None) -> RawScore:
        """Example ``i`` of the batch's ``states``: its raw values."""
        rs = RawScore(line=enc.line, n_tokens=len(enc), n_response_tokens=enc.n_response_tokens)
        h = states.last[i]
        rs.vector = self.project(h)
        if stats is not None:
            rs.grad_sq_norm = stats[1]
        example = Pass(enc, h, states.openings[i], self.anchors, stats)
        for s in self.scorers:
            rs.put(HOOKS[s](example))
        return rs
