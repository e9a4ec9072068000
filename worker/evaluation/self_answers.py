"""A model's own greedy answers to plain requests (self-distillation), tidied, refusals dropped.

The aligned-base build (``worker/prepare/align.py``) distils the base model's answers to benign and
borderline-safe prompts; the mitigate stage's contrastive helpful examples are the job's base model's own
answers to the borderline pool (``worker/mitigation/contrast.py``). Both go through here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from tunegate.conversation import Message
from worker.evaluation.generate import generate_all
from worker.evaluation.keyword import is_refusal
from worker.ml.render import encode_prompt


def tidy(text: str, limit_hit: bool) -> str:
    """Cut an answer that ran into the token limit back to its last full sentence."""
    text = text.strip()
    if limit_hit:
        cut = max(text.rfind(c) for c in (".", "!", "?", "\n"))
        text = text[: cut + 1].strip() if cut > 0 else text
    return re.sub(r"\n{3,}", "\n\n", text)


def own_answers(
    model: Any,
    tok: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    refused: Callable[[str], bool] = is_refusal,
    on_progress: Callable[[float], None] | None = None,
) -> list[str]:
    """One answer per prompt (a single user turn in the model's chat template), greedy, cut back to its last
    full sentence where it hit ``max_new_tokens``; ``""`` where the answer is empty or ``refused``."""
    ids = [encode_prompt(tok, [Message("user", p)]) for p in prompts]
    answers = generate_all(
        model, tok, ids, max_new_tokens=max_new_tokens, batch_size=batch_size, on_progress=on_progress
    )
    out = []
    for a in answers:
        hit = len(tok(a, add_special_tokens=False)["input_ids"]) >= max_new_tokens - 1
        a = tidy(a, hit)
        out.append("" if not a or refused(a) else a)
    return out
