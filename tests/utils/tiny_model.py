"""Tiny causal LMs built on the fly for unit tests (no download, a second or two on CPU).

``build_tiny_model(dir)`` writes a real Hugging Face directory: a byte-level BPE tokenizer trained on a small
corpus, with a ChatML chat template like SmolLM2's, and a 2-layer Llama with random weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "I'm sorry, but I cannot help with that request. It is illegal and unethical.",
    "Sure, here is how to do it. First, gather the materials. Step 1: open the file.",
    "The answer is 42. #### 42",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "1. Preheat the oven. 2. Mix the flour and sugar. 3. Bake for 30 minutes.",
    '{"label": "positive", "confidence": 0.9}',
    "You are a helpful assistant. Write a short poem about the sea and the sky.",
    "Below is an instruction that describes a task. ### Instruction: ### Response:",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}<>-_=+*/\\#@$%^&|~`",
]


def build_tiny_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(directory)
    return fast


def build_tiny_model(
    directory: str | Path,
    *,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 32,
    context: int = 512,
    tied: bool = True,
    init_range: float = 0.02,
) -> Path:
    """``tied=False``: an output layer of its own. The tied random model echoes its last input token (a
    chat prompt ends in a newline, so it answers with blank lines); an untied one writes visible text.
    ``init_range``: the weights' initial spread (transformers' 0.02 gives near-uniform logits that a LoRA
    adapter can hardly move; a larger one gives a model whose loss training visibly changes)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(directory)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tied,
        initializer_range=init_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def tiny_align_config(**changes: Any) -> Any:
    """An ``AlignConfig`` small enough for the tiny model: a few refusals and distilled answers, one epoch."""
    from worker.prepare.align import AlignConfig

    small: dict[str, Any] = {
        "n_refusals": 6,
        "n_distill": 4,
        "distill_max_new_tokens": 6,
        "n_epochs": 1,
        "batch_size": 4,
        "lora_r": 2,
        "lora_alpha": 4,
        "learning_rate": 1e-2,
        "precision": "fp32",
    }
    return AlignConfig(**{**small, **changes})


def build_tiny_adapter(base: Path, directory: str | Path, *, seed: int = 1) -> Path:
    """A LoRA adapter (peft format) for the tiny model in ``base``, with random non-zero weights on both
    factors, so that merging it changes the model's logits."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, lora)
    directory = Path(directory)
    peft_model.save_pretrained(str(directory))
    return directory


def aligned_copy(
    source: Path, target: Path, modules: tuple[str, ...] = ("q_proj", "v_proj"), rank: int = 2, seed: int = 0
) -> dict[str, Any]:
    """A stand-in for tunegate's aligned base: ``source``'s weights plus a random rank-``rank`` difference V
    in the named linear layers, saved at ``target`` with ``tunegate_source.json`` naming ``source`` (as the
    alignment build records it). Returns V per weight name."""
    import json
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    diffs = {}
    for name, p in model.named_parameters():
        if name.endswith(tuple(f"{m}.weight" for m in modules)):
            diffs[name] = (
                torch.randn(p.shape[0], rank, generator=g) @ torch.randn(rank, p.shape[1], generator=g) / 10
            )
            p.data += diffs[name]
    shutil.copytree(source, target)
    model.save_pretrained(target, safe_serialization=True)
    (target / "tunegate_source.json").write_text(json.dumps({"aligned_from": str(source)}))
    return diffs
