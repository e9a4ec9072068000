"""Anchor features: the shipped sets, the direction d against a naive computation, and the cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from worker.ml.render import collate, encode
from worker.scoring import anchors as A


def test_shipped_anchor_sets_are_well_formed() -> None:
    sets = A.anchor_sets()
    assert set(sets) == {"harmful", "safe1", "safe2"}
    harm_prompts = [c.user_turns[0] for c in sets["harmful"]]
    cats: dict[str, int] = {}
    for line in (A.ANCHOR_DIR / "harmful.jsonl").read_text().splitlines():
        cat = json.loads(line)["category"]
        cats[cat] = cats.get(cat, 0) + 1
    assert len(cats) >= 3 and min(cats.values()) >= 10
    for name in ("safe1", "safe2"):
        assert [c.user_turns[0] for c in sets[name]] == harm_prompts  # same requests, refused
    styles = {name: {c.assistant_turns[0][:12] for c in sets[name]} for name in sets}
    assert styles["safe1"].isdisjoint(styles["safe2"])  # two distinct refusal styles
    assert all(c.assistant_turns[0].startswith(("Sure", "Absolutely", "Of course")) for c in sets["harmful"])


def _small_anchor_dir(tmp_path: Path, n: int = 2) -> Path:
    d = tmp_path / "anchors"
    d.mkdir()
    for name in A.SETS:
        lines = (A.ANCHOR_DIR / f"{name}.jsonl").read_text().splitlines()[:n]
        (d / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return d


def _naive_unit_grad(model: Any, tok: Any, conv: Any) -> torch.Tensor:
    enc = encode(tok, conv, max_len=512).first_response_tokens(A.ANCHOR_TOKENS)
    b = collate([enc], tok.pad_token_id)
    logits = model(input_ids=b["input_ids"], use_cache=False).logits[0, :-1]
    loss = torch.nn.functional.cross_entropy(logits, b["labels"][0, 1:], ignore_index=-100)
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, list(model.parameters()))]).double()
    return g / g.norm()


def test_direction_matches_naive(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tok = tiny
    adir = _small_anchor_dir(tmp_path)
    feats = A.compute_anchors(model, tok, max_len=512, with_direction=True, anchor_dir=adir)
    assert feats.direction is not None
    expected = torch.zeros_like(_naive_unit_grad(model, tok, A.anchor_sets(adir)["harmful"][0]))
    for name, convs in A.anchor_sets(adir).items():
        for c in convs:
            expected += (
                A.SETS[name] / len(convs) * _naive_unit_grad(model, tok, c)
            )  # fresh gradient per anchor
    got = torch.cat([feats.direction[n].reshape(-1) for n, _ in model.named_parameters()]).double()
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7)
    assert feats.harm_h.shape[0] == 2 and feats.safe_h.shape[0] == 4
    assert all(p.grad is None for p in model.parameters())


def test_first_ten_tokens_only(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    conv = A.anchor_sets()["safe1"][0]
    enc = encode(tok, conv, max_len=512)
    assert enc.n_response_tokens > A.ANCHOR_TOKENS
    assert enc.first_response_tokens(A.ANCHOR_TOKENS).n_response_tokens == A.ANCHOR_TOKENS


def test_cache_reused_and_invalidated(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tok = tiny
    adir, cache = _small_anchor_dir(tmp_path, 1), tmp_path / "cache"
    first = A.load_or_compute(model, tok, cache, max_len=512, with_direction=False, anchor_dir=adir)
    files = list(cache.glob("anchors-*.pt"))
    assert len(files) == 1 and first.direction is None
    again = A.load_or_compute(model, tok, cache, max_len=512, with_direction=False, anchor_dir=adir)
    assert torch.equal(again.harm_h, first.harm_h) and again.key == first.key
    with_dir = A.load_or_compute(model, tok, cache, max_len=512, with_direction=True, anchor_dir=adir)
    assert with_dir.direction is not None  # recomputed because the direction was missing
    shutil.copy(A.ANCHOR_DIR / "harmful.jsonl", adir / "harmful.jsonl")  # edit an anchor file
    assert A.anchors_key(adir) != first.key
    changed = A.load_or_compute(model, tok, cache, max_len=512, with_direction=False, anchor_dir=adir)
    assert changed.harm_h.shape[0] == 40
    assert len(list(cache.glob("anchors-*.pt"))) == 2


@pytest.mark.parametrize("n", [0, 3])
def test_first_response_tokens_edge(tiny: tuple[Any, Any], n: int) -> None:
    _, tok = tiny
    enc = encode(tok, A.anchor_sets()["harmful"][0], max_len=512)
    assert enc.first_response_tokens(n).n_response_tokens == n


def test_the_request_probe_reads_the_same_opening_states_from_the_cut_sequences(
    tiny: tuple[Any, Any],
) -> None:
    """``opening_states`` forwards each conversation only through its first supervised token; the state
    where the reply opens is what the full sequence gives there (causal attention)."""
    from worker.scoring.forward import features

    model, tok = tiny
    convs = [*A.anchor_sets()["harmful"][:3], *A.anchor_sets()["safe1"][:2]]
    full = [encode(tok, c, max_len=512) for c in convs]
    cut = [e.through_first_opening() for e in full]
    assert all(len(c) < len(f) and c.n_response_tokens == 1 for c, f in zip(cut, full, strict=True))
    assert all(c.input_ids == f.input_ids[: len(c)] for c, f in zip(cut, full, strict=True))
    with torch.no_grad():
        whole = [features(model, collate([e], tok.pad_token_id, "cpu")).openings[0][0] for e in full]
    got = A.opening_states(model, tok, convs, max_len=512, batch_size=2)
    assert torch.allclose(got, torch.stack(whole), atol=1e-5)


def test_shares_joined_give_the_whole_passes(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    """Consecutive ranges of the anchors, one cutting the harmful set and one cutting safe1 from safe2,
    joined: the whole run's states in order and its direction."""
    model, tok = tiny
    adir = _small_anchor_dir(tmp_path, n=3)  # harmful 0-2, safe1 3-5, safe2 6-8
    assert A.n_anchors(adir) == 9
    kw: dict[str, Any] = {"max_len": 512, "with_direction": True, "anchor_dir": adir}
    whole = A.anchor_passes(model, tok, **kw)
    seen: list[tuple[int, int]] = []
    parts = [
        A.anchor_passes(model, tok, share=s, progress=lambda d, t: seen.append((d, t)), **kw)
        for s in ((0, 2), (2, 7), (7, 9))
    ]
    assert parts[2].harm_h.numel() == 0 and parts[0].safe_h.numel() == 0
    assert seen[-1] == (2, 2) and (5, 5) in seen
    joined = A.join(parts)
    assert torch.allclose(joined.harm_h, whole.harm_h, atol=1e-6)
    assert torch.allclose(joined.safe_h, whole.safe_h, atol=1e-6)
    assert whole.direction is not None and joined.direction is not None
    for name, d in whole.direction.items():
        assert torch.allclose(joined.direction[name], d, rtol=1e-4, atol=1e-7), name
