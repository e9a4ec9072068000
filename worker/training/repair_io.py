"""Apply a post-training repair (``worker/training/repair.py``) to a saved peft LoRA adapter: read the
adapter and the two bases' weights layer by layer, write the repaired adapter beside it (atomically) with a
record of what changed in ``tunegate_repair.json``; and measure an adapter's task loss on held-out data
(``task_loss``), the figure a repair may not raise by more than the repair stage allows."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict

from tunegate.artifacts import atomic_write_json, publish_dir, read_json
from tunegate.conversation import Conversation
from tunegate.errors import InvalidConfig, InvalidFile, ModelError
from tunegate.settings import Settings
from worker.ml.models import SOURCE_FILE
from worker.training import repair

if TYPE_CHECKING:
    from torch import Tensor

ADAPTER_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
REPAIR_FILE = "tunegate_repair.json"


@dataclass(frozen=True)
class RepairConfig:
    method: Literal["none", "restore", "project", "merge"] = "none"
    alpha: float = 0.5  # restore: how much of the alignment difference V is added back
    threshold: float = 0.35  # project, merge: layers with cosine(dW, C dW) below it are projected / merged
    weight: float = 0.2  # merge: a merged layer's update is (1 - weight) dW + weight V

    def __post_init__(self) -> None:
        if self.method not in ("none", "restore", "project", "merge"):
            raise InvalidConfig("repair method must be none, restore, project or merge", param="repair")
        if not 0 < self.alpha <= 2:
            raise InvalidConfig("repair alpha must be in (0, 2]", param="repair_alpha")
        if not 0 <= self.threshold <= 1:
            raise InvalidConfig("repair threshold must be in [0, 1]", param="repair_threshold")
        if not 0 < self.weight < 1:
            raise InvalidConfig("repair merge weight must be in (0, 1)", param="merge_weight")


class AdapterConfig(TypedDict, total=False):
    """The keys of peft's ``adapter_config.json`` a repair reads (its other keys are kept as written)."""

    r: int
    lora_alpha: float
    use_rslora: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]


class RepairRecord(TypedDict):
    """``tunegate_repair.json``: what a repair changed."""

    method: str
    reference: str
    n_layers: int
    n_changed: int
    layers: list[dict[str, str | int | float | bool]]  # repair.LayerRepair's fields


class _SafeHandle(Protocol):
    """What ``safetensors.safe_open`` gives (the package ships no types)."""

    def keys(self) -> list[str]: ...

    def get_tensor(self, name: str) -> Tensor: ...


@dataclass(frozen=True)
class RepairApplied:
    """What the train stage records of the repair it applied to its adapter (``TrainResult.repair``):
    ``tunegate_repair.json`` without the layers."""

    method: str
    reference: str  # the unaligned model V was measured against
    n_layers: int
    n_changed: int


@dataclass
class RepairReport:
    method: str
    reference: str  # the unaligned model V was measured against
    layers: list[repair.LayerRepair] = field(default_factory=list)

    @property
    def n_changed(self) -> int:
        return sum(r.changed for r in self.layers)

    def applied(self) -> RepairApplied:
        return RepairApplied(self.method, self.reference, len(self.layers), self.n_changed)

    def to_dict(self) -> RepairRecord:
        return {
            "method": self.method,
            "reference": self.reference,
            "n_layers": len(self.layers),
            "n_changed": self.n_changed,
            "layers": [asdict(r) for r in self.layers],
        }


def alignment_reference(aligned_dir: Path) -> Path | None:
    """The unaligned model an aligned base was built from (its ``tunegate_source.json``), if recorded."""
    f = aligned_dir / SOURCE_FILE
    if not f.is_file():
        return None
    src = read_json(f).get("aligned_from")  # written by the alignment build (worker/ml/export.merge)
    return Path(src) if src else None


class _Weights:
    """Lazy access to a model directory's safetensors tensors by name (one file or several shards)."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors import safe_open

        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise ModelError(f"no safetensors weights in {model_dir}")
        self._handles: list[_SafeHandle] = [safe_open(str(f), framework="pt") for f in files]
        self._where: dict[str, _SafeHandle] = {k: h for h in self._handles for k in h.keys()}
        self.dir = model_dir

    def get(self, name: str) -> Tensor:
        h = self._where.get(name)
        if h is None:
            raise ModelError(f"{self.dir} has no weight {name!r} (the adapter does not fit this base)")
        return h.get_tensor(name).float()


def _modules(state: dict[str, Tensor]) -> list[str]:
    """The base-model weight names the adapter adapts (``...q_proj.weight``), in order."""
    names = [
        k.removeprefix(PREFIX).removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight")
    ]
    return sorted(names)


def _scale(cfg: AdapterConfig, r: int) -> float:
    alpha = float(cfg["lora_alpha"])
    return alpha / r**0.5 if cfg.get("use_rslora") else alpha / r


def repair_adapter(
    adapter_dir: Path, aligned_dir: Path, unaligned_dir: Path, out_dir: Path, cfg: RepairConfig
) -> RepairReport:
    """Write the repaired copy of ``adapter_dir`` to ``out_dir`` and return what changed."""
    from safetensors.torch import load_file, save_file

    acfg: AdapterConfig = read_json(adapter_dir / "adapter_config.json")
    if acfg.get("rank_pattern") or acfg.get("alpha_pattern"):
        raise InvalidConfig("repair needs one rank and alpha for all layers", param="repair")
    state: dict[str, Tensor] = load_file(str(adapter_dir / ADAPTER_FILE))
    al, un = _Weights(aligned_dir), _Weights(unaligned_dir)
    r = int(acfg["r"])
    report = RepairReport(cfg.method, str(unaligned_dir))
    diffs = {m: al.get(m + ".weight") - un.get(m + ".weight") for m in _modules(state)}  # V (out, in)
    if cfg.method in ("restore", "merge"):
        new_r, state = _restore(state, diffs, acfg, r, cfg, report)
        acfg = acfg.copy()
        acfg["r"] = new_r
    elif cfg.method == "project":
        state = _project(state, diffs, _scale(acfg, r), cfg.threshold, report)
    _write(adapter_dir, out_dir, state, acfg, report, save_file)
    return report


def _keys(m: str) -> tuple[str, str]:
    return f"{PREFIX}{m}.lora_A.weight", f"{PREFIX}{m}.lora_B.weight"


def _restore(
    state: dict[str, Tensor],
    diffs: dict[str, Tensor],  # V per module
    acfg: AdapterConfig,
    r: int,
    cfg: RepairConfig,
    report: RepairReport,
) -> tuple[int, dict[str, Tensor]]:
    """restore (every layer: dW + alpha V) or merge (the layers SafeMERGE's test flags: (1 - w) dW + w V;
    the others dW), written as one LoRA of rank r + the largest rank of V."""
    import torch

    svds = {m: repair.thin_svd(v) for m, v in diffs.items()}  # (U, S, Vh) of each V, once
    new_r = r + max((s.numel() for _, s, _ in svds.values()), default=0)
    scale, new_scale = _scale(acfg, r), _scale(acfg, new_r)
    out = dict(state)
    for m, usv in svds.items():
        ka, kb = _keys(m)
        a, b = state[ka].float(), state[kb].float()  # (r, in), (out, r)
        rank = usv[1].numel()
        sim, keep, add = 0.0, 1.0, cfg.alpha
        if cfg.method == "merge":
            sim = repair.safety_similarity(a, b, scale, diffs[m])
            keep, add = repair.merge_weights(sim, rank, cfg.threshold, cfg.weight)
        a2, b2 = repair.restore_factors(a, b, scale, new_scale, usv, add, keep)
        pad = new_r - a2.shape[0]  # layers whose V has a lower rank: zero rows/columns change nothing
        a2 = torch.cat([a2, a2.new_zeros(pad, a2.shape[1])], 0)
        b2 = torch.cat([b2, b2.new_zeros(b2.shape[0], pad)], 1)
        out[ka], out[kb] = a2.to(state[ka].dtype).contiguous(), b2.to(state[kb].dtype).contiguous()
        dw = repair.lora_delta(a, b, scale)
        changed = rank > 0 and (add > 0 or keep != 1.0)
        report.layers.append(
            repair.LayerRepair(
                m, rank, sim, changed, float(dw.norm()), float(repair.lora_delta(a2, b2, new_scale).norm())
            )
        )
    return new_r, out


def _project(
    state: dict[str, Tensor], diffs: dict[str, Tensor], scale: float, threshold: float, report: RepairReport
) -> dict[str, Tensor]:
    out = dict(state)
    for m, v in diffs.items():
        ka, kb = _keys(m)
        b2, rec = repair.project_layer(state[ka].float(), state[kb].float(), scale, v, threshold)
        out[kb] = b2.to(state[kb].dtype).contiguous()
        report.layers.append(replace(rec, module=m))
    return out


def _write(
    adapter_dir: Path,
    out_dir: Path,
    state: dict[str, Tensor],
    acfg: AdapterConfig,
    report: RepairReport,
    save_file: Any,
) -> None:
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(adapter_dir, tmp)
        save_file(state, str(tmp / ADAPTER_FILE), metadata={"format": "pt"})
        atomic_write_json(tmp / "adapter_config.json", acfg)
        atomic_write_json(tmp / REPAIR_FILE, report.to_dict())
        publish_dir(tmp, out_dir)
    except BaseException:  # a half-written adapter never stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def task_loss(
    model: Any, tokenizer: Any, convs: list[Conversation], max_len: int, batch_size: int = 8
) -> float:
    """The token-weighted mean cross-entropy of ``model`` on the trained (assistant) tokens of ``convs``,
    rendered and scored as the train stage trains them (``worker.ml.render.encode``,
    ``worker.training.math``); nan when they hold no trained token. A conversation the train stage could not
    train on either (no trained token, longer than ``max_len``) counts for nothing."""
    import torch

    from worker.ml.render import collate, encode
    from worker.training.math import token_stats

    enc = []
    for c in convs:
        try:
            enc.append(encode(tokenizer, c, max_len=max_len))
        except InvalidFile:  # encode's refusal names it; here it simply has no reply tokens to measure
            continue
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(enc), batch_size):
            batch = collate(enc[i : i + batch_size], int(tokenizer.pad_token_id or 0), device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss_sum, n_tokens, _ = token_stats(logits.float(), batch["labels"])
            total += float(loss_sum)
            tokens += n_tokens
    return total / tokens if tokens else float("nan")


def adapter_task_loss(
    model_name: str,
    adapter_dir: Path,
    convs: list[Conversation],
    settings: Settings,
    *,
    device: str = "",
    batch_size: int = 8,
) -> float:
    """``task_loss`` of the base ``model_name`` with the adapter in ``adapter_dir`` (the base loaded afresh,
    so no adapter stays attached), on at most ``settings.max_example_tokens`` tokens per conversation."""
    from peft import PeftModel

    from worker.ml.models import context_length, load_resolved

    lm = load_resolved(model_name, settings, device=device)
    max_len = min(context_length(lm.model), settings.max_example_tokens)
    tuned = PeftModel.from_pretrained(lm.model, str(adapter_dir)).eval()
    return task_loss(tuned, lm.tokenizer, convs, max_len, batch_size)
