"""The shipped alignment adapter: a recipe build exported as float16, folded back exactly (the same bytes
every time), used by ``prepare_aligned`` only for the model it was trained on; and the adapter the project
ships folds into the real embedded model with the fingerprint its build recorded, on this machine as on the
one that exported it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.utils.tiny_model import tiny_align_config
from tunegate.errors import ModelError
from tunegate.settings import get_settings, reset_settings
from worker.ml.models import SOURCE_FILE, fingerprint, resolve_model
from worker.prepare import shipped
from worker.prepare.align import prepare_aligned


def test_exact_product_is_the_matrix_product_summed_rank_by_rank() -> None:
    g = torch.Generator().manual_seed(0)
    b, a = torch.randn(7, 4, generator=g), torch.randn(4, 5, generator=g)
    got = shipped.exact_product(b, a)
    assert got.dtype == torch.float64
    assert torch.allclose(got, b.double() @ a.double(), rtol=0, atol=1e-12)
    by_hand = sum(b.double()[:, k, None] * a.double()[None, k, :] for k in range(4))
    assert torch.equal(got, by_hand)  # the same additions in the same order: the same bits


def test_a_recipe_build_exported_folds_back_the_same_everywhere(
    tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = get_settings()
    built = prepare_aligned(settings, cfg=tiny_align_config())
    assert (built / shipped.KEPT_ADAPTER / shipped.ADAPTER_WEIGHTS).is_file()
    assert fingerprint(built) != fingerprint(
        tiny_registry
    )  # the kept adapter is no weights file of the model
    recipe = load_file(str(built / shipped.WEIGHTS))
    base = resolve_model("smollm2-135m", settings)
    dest = tmp_path / "aligned"
    build = shipped.export(built, base.path, dest)
    assert build.source_fingerprint == base.fingerprint and build.align_config["n_refusals"] == 6
    assert build.built["n_refusals"] == 6
    assert {t.dtype for t in load_file(str(dest / shipped.ADAPTER_WEIGHTS)).values()} == {torch.float16}
    assert not dest.with_name("aligned.fold-check").exists()

    monkeypatch.setattr(shipped, "SHIPPED_DIR", dest)
    entry = dest / "caches" / "eval-cache" / "entry.json"
    entry.parent.mkdir(parents=True)
    entry.write_text("{}")
    shutil.rmtree(built)
    target = prepare_aligned(settings)  # no recipe asked for: the shipped adapter, folded
    assert target == built and fingerprint(target) == build.fingerprint
    assert (settings.eval_cache_path / "entry.json").is_file()  # its shipped caches come with it
    source = json.loads((target / SOURCE_FILE).read_text())
    assert source["adapter"] == "shipped" and source["aligned_from"] == str(base.path)
    folded, original = load_file(str(target / shipped.WEIGHTS)), load_file(str(base.path / shipped.WEIGHTS))
    changed = [k for k in folded if not torch.equal(folded[k], original[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed)
    # the recipe's own merge (peft, float32 adapter) up to the float16 rounding of the shipped adapter
    assert max(float((folded[k] - recipe[k]).abs().max()) for k in folded) < 1e-3
    again = shipped.fold_shipped(base.path, tmp_path / "again", build, dest)
    assert (again / shipped.WEIGHTS).read_bytes() == (target / shipped.WEIGHTS).read_bytes()


def test_the_shipped_adapter_applies_only_to_its_own_model(tiny_registry: Path, tmp_path: Path) -> None:
    settings = get_settings()
    built = prepare_aligned(settings, cfg=tiny_align_config())
    base = resolve_model("smollm2-135m", settings)
    dest = tmp_path / "aligned"
    build = shipped.export(built, base.path, dest)
    assert shipped.shipped_for(base.fingerprint, dest) == build
    assert shipped.shipped_for("0" * 16, dest) is None  # another model: built by the recipe instead
    assert shipped.shipped_for(base.fingerprint, tmp_path / "nothing") is None
    wrong = shipped.ShippedBuild(build.source_fingerprint, "f" * 16, build.align_config, build.built)
    with pytest.raises(ModelError, match="gave weights .* not the shipped build's ffff"):
        shipped.fold_shipped(base.path, tmp_path / "folded", wrong, dest)
    assert not (tmp_path / "folded").exists()  # nothing half-right is left to be picked up


def test_an_adapter_that_does_not_fold_exactly_is_refused(tiny_registry: Path, tmp_path: Path) -> None:
    built = prepare_aligned(get_settings(), cfg=tiny_align_config())
    kept = built / shipped.KEPT_ADAPTER
    config = json.loads((kept / shipped.ADAPTER_CONFIG).read_text())
    (kept / shipped.ADAPTER_CONFIG).write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ModelError, match="only a plain LoRA adapter folds exactly"):
        shipped.fold(tiny_registry, kept, tmp_path / "folded", {})


def test_the_shipped_adapter_folds_into_the_embedded_model_with_its_recorded_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = shipped.ShippedBuild.read()
    assert build is not None, "tunegate/data/aligned/ ships no adapter"
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    reset_settings()
    base = resolve_model("smollm2-135m", get_settings())  # the embedded GGUF, converted
    assert shipped.shipped_for(base.fingerprint) == build
    target = shipped.fold_shipped(base.path, tmp_path / "aligned", build)
    assert fingerprint(target) == build.fingerprint
    assert (
        build.align_config["lora_r"]
        == json.loads((shipped.SHIPPED_DIR / shipped.ADAPTER_CONFIG).read_text())["r"]
    )
