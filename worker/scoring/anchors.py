"""Anchor features, computed once per base model and cached.

- Representation anchors: the final-norm hidden state at the last token of every harmful anchor (request plus
  compliant opening) and of every safe anchor (the same requests refused, two styles).
- Gradient direction: d = m_harm − m_safe1 − m_safe2, each m_S the mean of *unit* per-anchor gradients with
  the
  loss on the first 10 response tokens only (He et al.). Unlike the published code, each anchor's gradient is
  its own (``zero_grad`` between anchors), all anchors of a set are used, and everything is fp32.
- Request probe: how the base reads the request a reply answers. A logistic probe
  (``worker.evaluation.probe``) on the final-norm state at the reply's opening (where the base decides how to
  answer), fitted on harmful requests (the harmful anchors' and the injection pool's) against benign ones
  (the reference corpus's, ``tunegate/data/reference``, and the injection pool's borderline ones,
  ``tunegate/data/pool/borderline.jsonl``: safe requests that sound risky, so that sounding risky is on the
  benign side). No evaluation set is among them. Strongly regularised (``REQUEST_L2``): on the panel's data
  (none of it in the fit) it read 100% of a1/a6/a7/a8_json's harmful requests and 82% of a8_template's as
  harmful and none of the benign controls' (borderline included) or random100's (docs/safety.md).

The cache file lives under ``<models>/<fingerprint>/scoring-cache/anchors-<key>.pt``; the key hashes the
anchor
files and the anchor settings, so editing an anchor file recomputes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunegate.conversation import Conversation, load_examples, parse_example
from tunegate.shipped import data_path, read_jsonl
from worker.evaluation.probe import Probe, fit
from worker.ml.render import collate, encode
from worker.scoring.forward import features, forward

log = logging.getLogger(__name__)

ANCHOR_DIR = data_path("anchors")
SETS = {"harmful": 1.0, "safe1": -1.0, "safe2": -1.0}  # sign of each set in d
ANCHOR_TOKENS = 10
CACHE_VERSION = "2"  # 2: the request probe
HARMFUL_REQUESTS = data_path("pool") / "harmful.jsonl"  # besides the harmful anchors' requests
BENIGN_REQUESTS = (data_path("reference") / "benign.jsonl", data_path("pool") / "borderline.jsonl")
PROBE_FIELDS = ("mean", "scale", "weight", "bias")  # the request probe's, as the cache keeps them (tensors)
REQUEST_L2 = 100.0  # on standardised features; 1 and 10 read the panel's JSON-extraction requests as harmful


@dataclass
class AnchorFeatures:
    harm_h: torch.Tensor  # (N_harm, C)
    safe_h: torch.Tensor  # (N_safe, C), both safe sets
    direction: dict[str, torch.Tensor] | None  # per parameter name, fp32; None when not computed
    key: str
    request: Probe  # P(harmful request) from a reply's opening state


def anchor_sets(anchor_dir: Path = ANCHOR_DIR) -> dict[str, list[Conversation]]:
    return {name: load_examples(anchor_dir / f"{name}.jsonl") for name in SETS}


def anchors_key(anchor_dir: Path = ANCHOR_DIR, n_tokens: int = ANCHOR_TOKENS) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:{n_tokens}".encode())
    for name in SETS:
        h.update((anchor_dir / f"{name}.jsonl").read_bytes())
    for path in (HARMFUL_REQUESTS, *BENIGN_REQUESTS):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _asked(path: Path) -> list[Conversation]:
    """Each ``prompt`` of a JSONL file as a request answered with ".": the reply's content never reaches its
    opening state, which reads the request only (causal attention)."""
    return [
        parse_example(
            {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": "."}]}, i
        )
        for i, r in enumerate(read_jsonl(path), 1)
    ]


def opening_states(
    model: Any,
    tokenizer: Any,
    convs: list[Conversation],
    max_len: int,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(N, C): each conversation's state at its first reply's opening; ``progress(done, total)`` after
    each batch."""
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, len(convs), batch_size):
            chunk = convs[s : s + batch_size]
            encoded = [encode(tokenizer, c, max_len=max_len).through_first_opening() for c in chunk]
            out += [o[0] for o in features(model, collate(encoded, tokenizer.pad_token_id, device)).openings]
            if progress is not None:
                progress(len(out), len(convs))
    return torch.stack(out).cpu()


def fit_request_probe(
    model: Any,
    tokenizer: Any,
    max_len: int,
    anchor_dir: Path = ANCHOR_DIR,
    progress: Callable[[int, int], None] | None = None,
) -> Probe:
    """The request probe: harmful requests (label 1) against benign ones (0), from their opening states."""
    reference, borderline = BENIGN_REQUESTS
    harmful = [*anchor_sets(anchor_dir)["harmful"], *_asked(HARMFUL_REQUESTS)]
    benign = [*load_examples(reference), *_asked(borderline)]
    x = opening_states(model, tokenizer, [*harmful, *benign], max_len, progress=progress)  # (N, C)
    y = torch.cat([torch.ones(len(harmful)), torch.zeros(len(benign))])  # (N,)
    return fit(x, y, l2=REQUEST_L2)


def _anchor_pass(
    model: Any, tokenizer: Any, conv: Conversation, n_tokens: int, max_len: int, grad: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """Hidden state (C,) and the unit gradient of the first-n-token loss (per parameter), one anchor."""
    device = next(model.parameters()).device
    enc = encode(tokenizer, conv, max_len=max_len).first_response_tokens(n_tokens)
    batch = collate([enc], tokenizer.pad_token_id, device)
    if not grad:
        with torch.no_grad():
            return features(model, batch).last[0], None
    model.zero_grad(set_to_none=True)
    loss, states = forward(model, batch)
    loss.sum().backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
    model.zero_grad(set_to_none=True)
    return states.last[0], {n: g / norm for n, g in grads.items()}


@dataclass
class AnchorPasses:
    """What the anchors' own passes give (all of ``AnchorFeatures`` but the request probe)."""

    harm_h: torch.Tensor  # (N_harm, C)
    safe_h: torch.Tensor  # (N_safe, C)
    direction: dict[str, torch.Tensor] | None

    def with_probe(self, request: Probe, key: str) -> AnchorFeatures:
        return AnchorFeatures(self.harm_h, self.safe_h, self.direction, key, request)


def compute_anchors(
    model: Any,
    tokenizer: Any,
    *,
    max_len: int,
    with_direction: bool,
    n_tokens: int = ANCHOR_TOKENS,
    anchor_dir: Path = ANCHOR_DIR,
    progress: Callable[[int, int], None] | None = None,
) -> AnchorFeatures:
    """``progress(done, total)`` after each anchor pass."""
    passes = anchor_passes(
        model,
        tokenizer,
        max_len=max_len,
        with_direction=with_direction,
        n_tokens=n_tokens,
        anchor_dir=anchor_dir,
        progress=progress,
    )
    request = fit_request_probe(model, tokenizer, max_len, anchor_dir)
    return passes.with_probe(request, anchors_key(anchor_dir, n_tokens))


def anchor_passes(
    model: Any,
    tokenizer: Any,
    *,
    max_len: int,
    with_direction: bool,
    n_tokens: int = ANCHOR_TOKENS,
    anchor_dir: Path = ANCHOR_DIR,
    progress: Callable[[int, int], None] | None = None,
    share: tuple[int, int] | None = None,
) -> AnchorPasses:
    """One pass per anchor: its hidden state and (``with_direction``) its unit gradient into d;
    ``progress(done, total)`` after each. ``share`` = (start, stop): only the anchors at those places of the
    sets' order (``n_anchors``), for ``join`` to put together with the other shares."""
    sets = anchor_sets(anchor_dir)
    start, stop = share if share is not None else (0, _count(sets))
    direction: dict[str, torch.Tensor] | None = None
    if with_direction:
        direction = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in model.named_parameters()}
    hs: dict[str, list[torch.Tensor]] = {name: [] for name in sets}
    place, done = 0, 0
    for name, convs in sets.items():
        for conv in convs:
            place += 1
            if not start < place <= stop:
                continue
            h, unit = _anchor_pass(model, tokenizer, conv, n_tokens, max_len, with_direction)
            hs[name].append(h.cpu())
            done += 1
            if progress is not None:
                progress(done, stop - start)
            if direction is not None and unit is not None:
                for pname, g in unit.items():
                    direction[pname].add_(g, alpha=SETS[name] / len(convs))  # d += ± ĝ_a / |S|
    return AnchorPasses(
        harm_h=_stack(hs["harmful"]),
        safe_h=_stack(hs["safe1"] + hs["safe2"]),
        direction={k: v.cpu() for k, v in direction.items()} if direction is not None else None,
    )


def n_anchors(anchor_dir: Path = ANCHOR_DIR) -> int:
    """How many anchors there are (``anchor_passes``'s shares are ranges of 0..n)."""
    return _count(anchor_sets(anchor_dir))


def _count(sets: dict[str, list[Conversation]]) -> int:
    return sum(len(c) for c in sets.values())


def _stack(hs: list[torch.Tensor]) -> torch.Tensor:
    """(K, C) of K states; (0,) when there are none (a share without anchors of that kind)."""
    return torch.stack(hs) if hs else torch.zeros(0)


def join(shares: list[AnchorPasses]) -> AnchorPasses:
    """The passes of consecutive shares (ranges in the sets' order) as one: their states in that order
    (each share's safe states are its safe1 then its safe2 ones, so the shares' safe states follow each
    other), their directions summed."""

    def cat(parts: list[torch.Tensor]) -> torch.Tensor:
        return _stack([]) if not (kept := [t for t in parts if t.numel()]) else torch.cat(kept)

    directions = [s.direction for s in shares if s.direction is not None]
    total = (
        {k: sum((d[k] for d in directions[1:]), directions[0][k].clone()) for k in directions[0]}
        if directions
        else None
    )
    return AnchorPasses(cat([s.harm_h for s in shares]), cat([s.safe_h for s in shares]), total)


def cache_file(cache_dir: Path, anchor_dir: Path = ANCHOR_DIR) -> Path:
    return cache_dir / f"anchors-{anchors_key(anchor_dir)}.pt"


def save(path: Path, feats: AnchorFeatures) -> None:
    """Cache ``feats`` at ``path`` (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    probe = {k: torch.tensor(getattr(feats.request, k), dtype=torch.float64) for k in PROBE_FIELDS}
    torch.save(
        {
            "harm_h": feats.harm_h,
            "safe_h": feats.safe_h,
            "direction": feats.direction,
            "request_probe": probe,
        },
        tmp,
    )
    tmp.replace(path)


def load_or_compute(
    model: Any,
    tokenizer: Any,
    cache_dir: Path,
    *,
    max_len: int,
    with_direction: bool,
    anchor_dir: Path = ANCHOR_DIR,
    progress: Callable[[int, int], None] | None = None,
) -> AnchorFeatures:
    """Cached anchor features for this model (recomputed when missing or lacking the direction;
    ``progress(done, total)`` after each anchor pass)."""
    key = anchors_key(anchor_dir)
    path = cache_file(cache_dir, anchor_dir)
    if path.is_file():
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("direction") is not None or not with_direction:
            request = Probe(*(data["request_probe"][k].tolist() for k in PROBE_FIELDS))
            return AnchorFeatures(data["harm_h"], data["safe_h"], data.get("direction"), key, request)
    log.info(
        "computing anchor features (%s) into %s",
        "with gradient direction" if with_direction else "hidden",
        path,
    )
    feats = compute_anchors(
        model,
        tokenizer,
        max_len=max_len,
        with_direction=with_direction,
        anchor_dir=anchor_dir,
        progress=progress,
    )
    save(path, feats)
    return feats
