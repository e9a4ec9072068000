"""LoRA adapters through peft: attach to a base model, read/write only the adapter's weights."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


def attach_lora(
    model: Any,
    *,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: str | tuple[str, ...],
    seed: int,
    layers: tuple[int, ...] = (),
) -> Any:
    """Wrap ``model`` with a fresh LoRA adapter (B=0, so the wrapped model starts equal to the base).

    ``layers`` restricts the adapter to those decoder blocks (all when empty); with only upper blocks
    adapted, backpropagation stops at the lowest adapted block, which makes CPU training cheaper.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    targets: str | list[str] = target_modules if isinstance(target_modules, str) else list(target_modules)
    if layers and targets == "all-linear":  # peft wants explicit names together with layers_to_transform
        targets = linear_names(model)
    cfg = LoraConfig(
        layers_to_transform=list(layers) or None,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def linear_names(model: Any) -> list[str]:
    """Leaf names of the linear layers inside the decoder blocks (q_proj, ..., down_proj)."""
    import torch

    return sorted(
        {
            n.rsplit(".", 1)[-1]
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}"
        }
    )


def adapter_state(model: Any) -> dict[str, Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_state(model: Any, state: dict[str, Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, state)


def trainable_parameters(model: Any) -> list[Any]:
    return [p for p in model.parameters() if p.requires_grad]
