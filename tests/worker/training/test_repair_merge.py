"""SafeMERGE-style layer-selective merge: the per-layer choice and the merged update against a hand
computation, the adapter files on a tiny model, and the held-out task loss against cross-entropy by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from worker.training import repair


def _aligned_v() -> torch.Tensor:
    """V aligned along output rows 0 and 1: C = V Vᵀ / ‖V‖_F = diag(9, 16, 0, 0, 0, 0) / 5."""
    v = torch.zeros(6, 4)
    v[0, 0], v[1, 1] = 3.0, 4.0
    return v


@pytest.mark.parametrize(
    ("similarity", "rank", "threshold", "expected"),
    [
        (0.1, 2, 0.35, (0.8, 0.2)),  # drifted out of the alignment's subspace: merged
        (0.9, 2, 0.35, (1.0, 0.0)),  # mostly inside it: kept
        (0.1, 0, 0.35, (1.0, 0.0)),  # the alignment did not change this layer: nothing to merge with
        (0.35, 2, 0.35, (1.0, 0.0)),  # at the threshold: kept (SafeMERGE merges below it)
    ],
)
def test_merge_weights_merge_only_drifted_aligned_layers(
    similarity: float, rank: int, threshold: float, expected: tuple[float, float]
) -> None:
    assert repair.merge_weights(similarity, rank, threshold, 0.2) == pytest.approx(expected)


def test_a_drifted_layer_becomes_point_eight_dw_plus_point_two_v_by_hand() -> None:
    v = _aligned_v()
    a = torch.ones(1, 4)  # (r=1, in=4)
    b = torch.zeros(6, 1)
    b[4, 0] = 1.0  # the update writes output row 4 only: outside rows 0 and 1, so C dW = 0
    sim = repair.safety_similarity(a, b, 1.0, v)
    assert sim == 0.0
    keep, add = repair.merge_weights(sim, repair.thin_svd(v)[1].numel(), 0.35, 0.2)
    a2, b2 = repair.restore_factors(a, b, 1.0, 0.5, repair.thin_svd(v), add, keep)
    want = torch.tensor(
        [
            [0.6, 0.0, 0.0, 0.0],  # 0.2 x 3
            [0.0, 0.8, 0.0, 0.0],  # 0.2 x 4
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.8, 0.8, 0.8, 0.8],  # 0.8 x the user's row of ones
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(repair.lora_delta(a2, b2, 0.5), want, atol=1e-6, rtol=1e-6)


def test_a_layer_inside_the_alignment_subspace_keeps_its_update_by_hand() -> None:
    v = _aligned_v()
    a, b = torch.ones(1, 4), torch.zeros(6, 1)
    b[0, 0] = 1.0  # the update writes row 0, which the alignment changed: C dW = 1.8 dW, cosine 1
    sim = repair.safety_similarity(a, b, 1.0, v)
    assert sim == pytest.approx(1.0)
    keep, add = repair.merge_weights(sim, 2, 0.35, 0.2)
    a2, b2 = repair.restore_factors(a, b, 1.0, 0.5, repair.thin_svd(v), add, keep)
    want = torch.zeros(6, 4)
    want[0] = 1.0
    torch.testing.assert_close(repair.lora_delta(a2, b2, 0.5), want, atol=1e-6, rtol=1e-6)


# --- the adapter files, on a tiny model ---------------------------------------------------------------------


def _adapter(aligned: Path, out: Path) -> Path:
    from worker.ml.models import load_model
    from worker.training.lora import attach_lora

    model = attach_lora(
        load_model(aligned, "cpu", dtype=torch.float32),
        r=4,
        alpha=8,
        dropout=0.0,
        target_modules=("q_proj", "v_proj", "o_proj"),
        seed=0,
    )
    g = torch.Generator().manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data = torch.randn(p.shape, generator=g) / 10  # a trained-looking update (B starts at 0)
    model.save_pretrained(out)
    return out


def _merged(aligned: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel

    from worker.ml.models import load_model

    base = load_model(aligned, "cpu", dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def test_merge_writes_an_adapter_whose_drifted_layers_are_point_eight_dw_plus_point_two_v(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from tests.utils.tiny_model import aligned_copy
    from worker.training.repair_io import RepairConfig, repair_adapter

    diffs = aligned_copy(tiny_model_dir, tmp_path / "aligned")  # V in q_proj and v_proj of both blocks
    aligned = tmp_path / "aligned"
    adapter = _adapter(aligned, tmp_path / "adapter")
    before = _merged(aligned, adapter)
    w_al = load_file(str(aligned / "model.safetensors"))
    report = repair_adapter(
        adapter, aligned, tiny_model_dir, tmp_path / "m", RepairConfig("merge", threshold=1.0, weight=0.2)
    )
    after = _merged(aligned, tmp_path / "m")
    # threshold 1: every aligned layer is merged; o_proj (not aligned: V = 0) keeps its update
    assert report.n_changed == len(diffs) == 4 and len(report.layers) == 6
    for name, v in diffs.items():
        dw = before[name] - w_al[name]
        torch.testing.assert_close(after[name], w_al[name] + 0.8 * dw + 0.2 * v, atol=1e-5, rtol=1e-4)
    o_proj = "model.layers.0.self_attn.o_proj.weight"
    torch.testing.assert_close(after[o_proj], before[o_proj], atol=1e-6, rtol=1e-5)
    rec = json.loads((tmp_path / "m" / "tunegate_repair.json").read_text())
    assert rec["method"] == "merge" and all(0 <= x["similarity"] <= 1 for x in rec["layers"])
    kept = repair_adapter(
        adapter, aligned, tiny_model_dir, tmp_path / "k", RepairConfig("merge", threshold=0.0, weight=0.2)
    )
    assert kept.n_changed == 0  # threshold 0: no layer is below it, the update is unchanged
    same = _merged(aligned, tmp_path / "k")
    for name in diffs:
        torch.testing.assert_close(same[name], before[name], atol=1e-5, rtol=1e-4)


def test_a_merge_weight_outside_zero_one_is_refused_by_name() -> None:
    from tunegate.errors import InvalidConfig
    from worker.training.repair_io import RepairConfig

    with pytest.raises(InvalidConfig) as err:
        RepairConfig("merge", weight=1.0)
    assert err.value.param == "merge_weight"


def test_task_loss_is_the_token_weighted_cross_entropy_of_the_reply_tokens(tiny_model_dir: Path) -> None:
    from tunegate.conversation import parse_example
    from worker.ml.models import load_model, load_tokenizer
    from worker.ml.render import encode
    from worker.training.repair_io import task_loss

    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, "cpu", dtype=torch.float32).eval()
    convs = [
        parse_example(
            {
                "messages": [
                    {"role": "user", "content": f"What is {i} plus {i}?"},
                    {"role": "assistant", "content": a},
                ]
            },
            i + 1,
        )
        for i, a in enumerate(["The answer is 2.", "It is 4, of course. #### 4", "6"])
    ]
    total, n = 0.0, 0
    for c in convs:  # one at a time, no padding: each reply token's -log p given everything before it
        e = encode(tok, c, max_len=512)
        ids = torch.tensor([e.input_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)  # (T, V)
        for t in range(1, len(e.labels)):
            if e.labels[t] != -100:
                total -= float(logp[t - 1, e.labels[t]])
                n += 1
    got = task_loss(model, tok, convs, max_len=512, batch_size=2)  # padded batches of 2 and 1
    assert n > 3 and got == pytest.approx(total / n, rel=1e-4)
    assert math.isnan(task_loss(model, tok, [], max_len=512))
