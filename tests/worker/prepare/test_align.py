"""Align stage on a tiny model: self-distillation + refusal SFT, merged and published atomically."""

import json

import pytest
import torch

from tests.utils.tiny_model import tiny_align_config
from tunegate.errors import InvalidConfig
from tunegate.settings import get_settings
from tunegate.shipped import data_path, read_jsonl
from worker.ml.models import embedded_dir, resolve_model
from worker.prepare.align import (
    DISTILL_ORDER,
    AlignConfig,
    distill_prompts,
    prepare_aligned,
    refusal_examples,
)


def test_prepare_aligned_builds_a_merged_model(tiny_registry):
    cfg = tiny_align_config()
    reports = []
    target = prepare_aligned(get_settings(), progress=lambda f, m, met: reports.append((f, m, met)), cfg=cfg)
    training = [r for r in reports if r[1].startswith(("training on", "epoch"))]
    assert training[0][1].startswith("training on") and len(training) > 2  # the bar moves while it trains
    assert [f for f, _, _ in training] == sorted(f for f, _, _ in training) and "train_loss" in training[-1][
        2
    ]
    assert target == embedded_dir("embedded:smollm2-aligned", get_settings())
    assert list(target.glob("*.safetensors")) and not target.with_name(target.name + ".building").exists()
    info = json.loads((target / "align_result.json").read_text())
    assert info["n_refusals"] == 6 and info["n_distilled"] + info["n_distill_dropped"] == 4
    resolved = resolve_model("smollm2-135m-aligned", get_settings())
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(resolved.path)
    base = AutoModelForCausalLM.from_pretrained(tiny_registry)
    diffs = [float((a - b).abs().max()) for a, b in zip(merged.parameters(), base.parameters(), strict=True)]
    assert max(diffs) > 0  # the safety SFT changed the weights
    assert not any("lora" in n for n, _ in merged.named_parameters())  # merged, not an adapter
    assert json.loads((target / "tunegate_source.json").read_text())["align_config"]["n_refusals"] == 6


def test_distill_prompts_take_kinds_in_order():
    kinds = {str(r["prompt"]): r["kind"] for r in read_jsonl(data_path("align", "benign.jsonl"))}
    count = {k: sum(v == k for v in kinds.values()) for k in DISTILL_ORDER}
    assert set(kinds.values()) == set(DISTILL_ORDER) and min(count.values()) > 0
    n_border, n_reason = count["borderline"], count["reasoning"]
    few = distill_prompts(n_border, seed=0)
    assert len(few) == n_border and all(kinds[p] == "borderline" for p in few)
    mid = distill_prompts(n_border + 10, seed=0)
    assert sum(kinds[p] == "reasoning" for p in mid) == 10
    more = distill_prompts(n_border + n_reason + 10, seed=0)
    assert sum(kinds[p] == "ordinary" for p in more) == 10 and len(set(more)) == len(more)
    assert more == distill_prompts(len(more), seed=0) and more != distill_prompts(len(more), seed=1)


def test_refusal_examples_and_config():
    exs = refusal_examples(5, seed=1)
    assert len(exs) == 5 and all(len(c.messages) == 2 for c in exs)
    with pytest.raises(InvalidConfig, match="n_epochs"):
        AlignConfig(n_epochs=0)


def test_reused_distillation_and_top_layers_only(tiny_registry):
    from tunegate.conversation import Conversation, Message

    distilled = [Conversation((Message("user", "hello"), Message("assistant", "Hi there, how can I help?")))]
    cfg = AlignConfig(
        n_refusals=4,
        n_epochs=1,
        batch_size=5,
        lora_r=2,
        lora_alpha=4,
        learning_rate=1e-2,
        lora_top_fraction=0.5,
        precision="fp32",
    )
    target = prepare_aligned(get_settings(), cfg=cfg, distilled=distilled)
    info = json.loads((target / "align_result.json").read_text())
    assert info["n_distilled"] == 1 and info["n_refusals"] == 4
    from transformers import AutoModelForCausalLM

    merged = dict(AutoModelForCausalLM.from_pretrained(target).named_parameters())
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_registry).named_parameters())
    changed = {n.split(".")[2] for n in merged if "layers." in n and not torch.equal(merged[n], base[n])}
    assert changed == {"1"}  # only the top half of the 2 blocks was adapted
    with pytest.raises(InvalidConfig, match="lora_top_fraction"):
        AlignConfig(lora_top_fraction=0)
