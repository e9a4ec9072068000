"""The shared rendering function: labels only on trained assistant tokens, clear errors on bad examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.utils.tiny_model import build_tiny_model
from tunegate.conversation import Conversation, Message
from tunegate.errors import InvalidFile
from worker.ml.render import IGNORE, collate, encode, encode_prompt, render_text


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from worker.ml.models import load_tokenizer

    path: Path = build_tiny_model(tmp_path_factory.mktemp("render") / "m")
    return load_tokenizer(path)


def _decode_labels(tok: Any, enc: Any) -> str:
    return str(tok.decode([t for t in enc.labels if t != IGNORE]))


def test_labels_cover_the_assistant_reply_and_end_of_turn(tok: Any) -> None:
    conv = Conversation((Message("user", "What is 2 + 2?"), Message("assistant", "The answer is 4.")), line=3)
    enc = encode(tok, conv, max_len=512)
    assert enc.line == 3 and len(enc.input_ids) == len(enc.labels)
    assert _decode_labels(tok, enc) == "The answer is 4.<|im_end|>"
    assert tok.decode(list(enc.input_ids)) == render_text(tok, conv.messages)


def test_weight_zero_turn_is_context_only(tok: Any) -> None:
    conv = Conversation(
        (
            Message("user", "Hi"),
            Message("assistant", "Hello there", weight=0.0),
            Message("user", "Bye"),
            Message("assistant", "Goodbye"),
        )
    )
    assert _decode_labels(tok, encode(tok, conv, max_len=512)) == "Goodbye<|im_end|>"


def test_first_response_tokens(tok: Any) -> None:
    conv = Conversation((Message("user", "Say"), Message("assistant", "one two three four five six")))
    enc = encode(tok, conv, max_len=512)
    first = enc.first_response_tokens(2)
    assert first.n_response_tokens == 2 and first.input_ids == enc.input_ids
    kept = [i for i, t in enumerate(first.labels) if t != IGNORE]
    assert kept == [i for i, t in enumerate(enc.labels) if t != IGNORE][:2]


def test_too_long_and_nothing_to_train_name_the_line(tok: Any) -> None:
    conv = Conversation((Message("user", "x"), Message("assistant", "word " * 200)), line=7)
    with pytest.raises(InvalidFile, match="line 7") as exc:
        encode(tok, conv, max_len=50)
    assert exc.value.code == "example_too_long"
    untrained = Conversation((Message("user", "x"), Message("assistant", "y", weight=0.0)), line=8)
    with pytest.raises(InvalidFile, match="line 8") as exc:
        encode(tok, untrained, max_len=512)
    assert exc.value.code == "empty_response"


def test_collate_right_pads(tok: Any) -> None:
    a = encode(tok, Conversation((Message("user", "a"), Message("assistant", "b"))), max_len=512)
    b = encode(
        tok,
        Conversation((Message("user", "a longer one"), Message("assistant", "a longer reply"))),
        max_len=512,
    )
    batch = collate([a, b], tok.pad_token_id)
    assert batch["input_ids"].shape == (2, len(b))
    assert batch["attention_mask"][0].sum().item() == len(a)
    assert (batch["labels"][0, len(a) :] == IGNORE).all()
    assert (batch["input_ids"][0, len(a) :] == tok.pad_token_id).all()


def test_encode_prompt_ends_with_generation_prompt(tok: Any) -> None:
    ids = encode_prompt(tok, (Message("user", "Hello"),))
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    assert len(encode_prompt(tok, (Message("user", "Hello " * 50),), max_len=10)) == 10
