"""Post-training repair: the math on hand-made matrices, and the adapter files on a tiny model (the repaired
adapter, loaded by peft on the aligned base, gives exactly the weights the repair promises)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from worker.training import repair


def _low_rank(out: int, inp: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, k, generator=g) @ torch.randn(k, inp, generator=g) / 10


def test_thin_svd_keeps_the_rank_of_the_alignment_difference_and_drops_rounding_noise() -> None:
    v = _low_rank(12, 9, 3, 0)
    u, s, vh = repair.thin_svd(v + 1e-9 * torch.randn(12, 9))
    assert s.numel() == 3
    torch.testing.assert_close(u * s @ vh, v, atol=1e-6, rtol=1e-5)
    assert repair.thin_svd(torch.zeros(4, 5))[1].numel() == 0


def test_restore_factors_give_the_users_update_plus_alpha_times_v() -> None:
    a, b, v = torch.randn(2, 9), torch.randn(12, 2), _low_rank(12, 9, 3, 1)
    a2, b2 = repair.restore_factors(a, b, scale=2.0, new_scale=0.8, usv=repair.thin_svd(v), alpha=0.5)
    assert a2.shape == (5, 9) and b2.shape == (12, 5)
    want = repair.lora_delta(a, b, 2.0) + 0.5 * v
    torch.testing.assert_close(repair.lora_delta(a2, b2, 0.8), want, atol=1e-5, rtol=1e-5)


def test_safety_projection_is_safe_loras_alignment_matrix_times_b() -> None:
    v, b = _low_rank(6, 4, 2, 2), torch.randn(6, 3)
    c = v @ v.T / torch.linalg.matrix_norm(v)  # (6, 6), formed here only to check
    torch.testing.assert_close(repair.safety_projection(v, b), c @ b, atol=1e-6, rtol=1e-5)
    assert torch.equal(repair.safety_projection(torch.zeros(6, 4), b), torch.zeros(6, 3))


@pytest.mark.parametrize(
    ("along", "threshold", "changed"),
    [(True, 0.5, False), (False, 0.5, True), (False, 0.0, False)],
)
def test_a_layer_is_projected_only_when_its_update_lies_outside_the_alignment_subspace(
    along: bool, threshold: float, changed: bool
) -> None:
    v = torch.zeros(6, 4)
    v[0, 0], v[1, 1] = 3.0, 4.0  # aligned along output rows 0 and 1 (C = diag(9, 16, 0, ...) / 5)
    b = torch.zeros(6, 1)
    b[0 if along else 4, 0] = 1.0
    a = torch.ones(1, 4)
    out, rec = repair.project_layer(a, b, 1.0, v, threshold)
    assert rec.changed is changed and rec.safety_rank == 2
    assert rec.similarity == pytest.approx(1.0 if along else 0.0)
    assert torch.equal(out, repair.safety_projection(v, b) if changed else b)


def test_a_layer_the_alignment_did_not_change_keeps_its_update() -> None:
    b = torch.randn(6, 2)
    out, rec = repair.project_layer(torch.randn(2, 4), b, 1.0, torch.zeros(6, 4), threshold=1.0)
    assert torch.equal(out, b) and not rec.changed and rec.safety_rank == 0


def test_cosine_of_a_zero_tensor_is_zero() -> None:
    assert repair.cosine(torch.zeros(2, 2), torch.ones(2, 2)) == 0.0
    assert repair.cosine(torch.ones(2, 2), 2 * torch.ones(2, 2)) == pytest.approx(1.0)


# --- the adapter files, on a tiny model ---------------------------------------------------------------------


def _aligned_pair(tiny: Path, tmp: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    from tests.utils.tiny_model import aligned_copy

    diffs = aligned_copy(tiny, tmp / "aligned")
    return tmp / "aligned", diffs


def _adapter(aligned: Path, tmp: Path) -> Path:
    from worker.ml.models import load_model
    from worker.training.lora import attach_lora

    model = attach_lora(
        load_model(aligned, "cpu", dtype=torch.float32),
        r=4,
        alpha=8,
        dropout=0.0,
        target_modules=("q_proj", "v_proj"),
        seed=0,
    )
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data = torch.randn_like(p) / 10  # a trained-looking update (B starts at 0)
    model.save_pretrained(tmp / "adapter")
    return tmp / "adapter"


def _merged(aligned: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel

    from worker.ml.models import load_model

    base = load_model(aligned, "cpu", dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def test_restore_writes_an_adapter_that_peft_loads_as_the_users_update_plus_alpha_v(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from worker.training.repair_io import RepairConfig, alignment_reference, repair_adapter

    aligned, diffs = _aligned_pair(tiny_model_dir, tmp_path)
    adapter = _adapter(aligned, tmp_path)
    assert alignment_reference(aligned) == tiny_model_dir
    before = _merged(aligned, adapter)
    report = repair_adapter(
        adapter, aligned, tiny_model_dir, tmp_path / "fixed", RepairConfig("restore", 0.5)
    )
    after = _merged(aligned, tmp_path / "fixed")
    assert report.n_changed == len(diffs) == 4
    for name, v in diffs.items():
        torch.testing.assert_close(after[name], before[name] + 0.5 * v, atol=1e-5, rtol=1e-5)
    rec = json.loads((tmp_path / "fixed" / "tunegate_repair.json").read_text())
    assert rec["method"] == "restore" and rec["n_changed"] == 4
    assert json.loads((tmp_path / "fixed" / "adapter_config.json").read_text())["r"] == 4 + 2


def test_project_replaces_the_update_of_projected_layers_by_c_dw_and_keeps_the_others(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from worker.training.repair_io import RepairConfig, repair_adapter

    aligned, diffs = _aligned_pair(tiny_model_dir, tmp_path)
    adapter = _adapter(aligned, tmp_path)
    base = {k: v.detach().clone() for k, v in _merged(aligned, adapter).items()}
    report = repair_adapter(
        adapter, aligned, tiny_model_dir, tmp_path / "p", RepairConfig("project", threshold=1.0)
    )
    after = _merged(aligned, tmp_path / "p")
    from safetensors.torch import load_file

    w_al = load_file(str(aligned / "model.safetensors"))
    assert report.n_changed == 4  # threshold 1: every layer is projected
    for name, v in diffs.items():
        dw = base[name] - w_al[name]
        c = v @ v.T / torch.linalg.matrix_norm(v)
        torch.testing.assert_close(after[name], w_al[name] + c @ dw, atol=1e-5, rtol=1e-4)
    kept = repair_adapter(
        adapter, aligned, tiny_model_dir, tmp_path / "k", RepairConfig("project", threshold=0.0)
    )
    assert kept.n_changed == 0


def test_an_adapter_that_does_not_fit_the_base_is_refused_by_name(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from tests.utils.tiny_model import build_tiny_model
    from tunegate.errors import ModelError
    from worker.training.repair_io import RepairConfig, repair_adapter

    aligned, _ = _aligned_pair(tiny_model_dir, tmp_path)
    adapter = _adapter(aligned, tmp_path)
    other = build_tiny_model(tmp_path / "other", layers=1)
    with pytest.raises(ModelError, match="has no weight 'model.layers.1"):
        repair_adapter(adapter, aligned, other, tmp_path / "x", RepairConfig("restore"))
    assert not (tmp_path / "x").exists()
