"""Pieces of a causal LM's forward that callers need separately, so nobody pays for what they do not use.

- ``decoder_hidden``: the decoder's final (normed) hidden states, without the vocabulary projection;
- ``head_logits``: the LM head (49,152 logits a position on SmolLM2, about a fifth of a forward's work) on
  the hidden states a caller selected, with the scaling or capping some architectures add after it;
- ``block_input``: the residual stream entering one decoder block (``hidden_states[layer]``); the forward
  stops there, so the blocks above it and the head never run.

Each works on a plain Hugging Face causal LM and on a peft model wrapping one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def base_lm(model: Any) -> Any:
    """The Hugging Face causal LM inside a peft model (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_hidden(model: Any, input_ids: Any, attention_mask: Any, **kwargs: Any) -> Any:
    """(B, T, H): the decoder's last hidden states (the LM head's input), no KV cache, no logits."""
    decoder = base_lm(model).get_decoder()
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    return out.last_hidden_state


def head_logits(model: Any, hidden: Any) -> Any:
    """The LM head on selected hidden states: (..., H) -> (..., V), as the model's own forward computes it."""
    import torch

    lm = base_lm(model)
    logits = lm.get_output_embeddings()(hidden)  # (..., V)
    # what some architectures' forward does after the head: Cohere scales, Granite divides, Gemma 2 caps
    if getattr(lm, "logit_scale", None) is not None and not callable(lm.logit_scale):
        logits = logits * lm.logit_scale
    if getattr(lm.config, "logits_scaling", None):
        logits = logits / lm.config.logits_scaling
    cap = getattr(lm.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


class _Reached(Exception):
    """Raised by the pre-hook of the block whose input was wanted: nothing above it needs to run."""


def block_input(model: Any, layer: int, **forward_kwargs: Any) -> Any:
    """(B, T, H): ``hidden_states[layer]`` of ``model(**forward_kwargs)``, the input of decoder block
    ``layer``, computed without the blocks above it or the LM head. ``layer`` equal to the number of blocks
    (the final normed state) runs the whole decoder."""
    layers = base_lm(model).get_decoder().layers
    if layer >= len(layers):
        out = model(**forward_kwargs, output_hidden_states=True, use_cache=False, logits_to_keep=1)
        return out.hidden_states[layer]
    captured: list[Any] = []

    def grab(_module: Any, args: tuple[Any, ...], kwargs: Mapping[str, object]) -> None:
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _Reached

    handle = layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(**forward_kwargs, use_cache=False)
    except _Reached:
        pass  # the wanted input was captured; stopping here is the point
    finally:
        handle.remove()
    return captured[0]
