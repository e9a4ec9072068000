"""Format features of an example's trained response: what a reviewer looks at when a score is high.

Both papers find that the benign examples which erode safety most are lists and math (anchoring) and
moderately long factual answers (Self-Inf-N), while very short answers score high on raw gradient norm.
"""

from __future__ import annotations

import re

from tunegate.conversation import Conversation
from tunegate.records import Features

_NUMBERED = re.compile(r"^\s*\d{1,3}[.)]\s+\S", re.MULTILINE)
_BULLET = re.compile(r"^\s*[-*•]\s+\S", re.MULTILINE)
_ARITH = re.compile(r"\d\s*[-+*/×x=]\s*\$?\d")
_MATH_MARK = re.compile(r"####|<<[^>]*>>|\\frac|\\sqrt|\$[^$\n]+\$")
_CODE = re.compile(
    r"```|^\s*(def|class|import|from \S+ import|function|public|#include)\b|;\s*$", re.MULTILINE
)
SHORT_ANSWER_TOKENS = 5


def response_text(conv: Conversation) -> str:
    return "\n\n".join(conv.trained_responses)


def extract(conv: Conversation, n_response_tokens: int) -> Features:
    """Features of the trained response text (all assistant turns with weight 1)."""
    text = response_text(conv)
    return Features(
        numbered_list=len(_NUMBERED.findall(text)) >= 2,
        bulleted_list=len(_BULLET.findall(text)) >= 2,
        math=bool(_MATH_MARK.search(text)) or len(_ARITH.findall(text)) >= 2,
        code=bool(_CODE.search(text)),
        short_answer=n_response_tokens <= SHORT_ANSWER_TOKENS,
        response_tokens=n_response_tokens,
        response_chars=len(text),
        response_words=len(text.split()),
    )


def describe(features: Features) -> list[str]:
    """Human-readable format tags, e.g. ["numbered list", "math"]."""
    tags = [
        label
        for hit, label in (
            (features.numbered_list, "numbered list"),
            (features.bulleted_list, "bulleted list"),
            (features.math, "math"),
            (features.code, "code"),
        )
        if hit
    ]
    if features.short_answer:
        tags.append(f"short answer ({features.response_tokens} tokens)")
    return tags
