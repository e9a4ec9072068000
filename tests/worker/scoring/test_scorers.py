"""The engine's scorer hooks: one for every spec of ``tunegate.scorers.SCORERS`` and no other, and the
engine's dispatch holding a hook to its spec (what it may read, what it may give)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.worker.scoring.scorers import THROWAWAY, response_length, throwaway_scorer
from tunegate.conversation import Conversation, Message
from tunegate.scorers import SCORERS
from worker.ml.render import encode
from worker.scoring.engine import Engine
from worker.scoring.scorers import HOOKS, Pass


def _encoded(tok: Any) -> list[Any]:
    convs = [
        Conversation((Message("user", "Say hi."), Message("assistant", a)), line=i + 1)
        for i, a in enumerate(("Hello! How can I help?", "Hi"))
    ]
    return [encode(tok, c, max_len=512) for c in convs]


def test_every_scorer_has_a_hook_and_every_hook_a_scorer() -> None:
    assert list(HOOKS) == list(SCORERS)


def test_a_scorer_without_a_hook_is_refused_naming_it(tiny: tuple[Any, Any], anchors: Any) -> None:
    model, tok = tiny
    with throwaway_scorer() as spec, pytest.MonkeyPatch.context() as mp:
        mp.delitem(HOOKS, spec.name)
        with pytest.raises(ValueError, match=f"no engine hook .*'{spec.name}'"):
            Engine(model, tok, anchors, ("representation", spec.name))


def test_the_engine_calls_a_registered_hook_and_needs_no_backward_for_it(
    tiny: tuple[Any, Any], anchors: Any
) -> None:
    model, tok = tiny
    encoded = _encoded(tok)
    with throwaway_scorer() as spec:
        engine = Engine(model, tok, anchors, (spec.name,), batch_size=8)
        assert engine.scorers == (spec.name,) and not engine.need_grad and engine.batch_size == 8
        raw = engine.score(encoded)
    assert [r.extra for r in raw] == [{spec.name: float(e.n_response_tokens)} for e in encoded]
    assert all(r.representation is None and r.grad_sq_norm is None for r in raw)
    assert raw[0].to_dict()[spec.name] == float(encoded[0].n_response_tokens)  # beside the typed values


def test_a_hook_reading_the_gradient_its_spec_does_not_declare_fails(
    tiny: tuple[Any, Any], anchors: Any
) -> None:
    model, tok = tiny

    def greedy(p: Pass) -> dict[str, float]:
        return {THROWAWAY.name: p.stats[1]}

    with throwaway_scorer(), pytest.MonkeyPatch.context() as mp:
        mp.setitem(HOOKS, THROWAWAY.name, greedy)
        with pytest.raises(RuntimeError, match="without its spec saying needs_gradient"):
            Engine(model, tok, anchors, (THROWAWAY.name,)).score(_encoded(tok))


def test_a_hook_giving_a_value_no_scorer_declares_is_refused(tiny: tuple[Any, Any], anchors: Any) -> None:
    model, tok = tiny

    def chatty(p: Pass) -> dict[str, float]:
        return {**response_length(p), "throwaway_words": 3.0}

    with throwaway_scorer(), pytest.MonkeyPatch.context() as mp:
        mp.setitem(HOOKS, THROWAWAY.name, chatty)
        with pytest.raises(ValueError, match="'throwaway_words', no registered scorer's value or companion"):
            Engine(model, tok, anchors, (THROWAWAY.name,)).score(_encoded(tok))


def test_the_shipped_hooks_give_their_value_and_companions(tiny: tuple[Any, Any], anchors: Any) -> None:
    model, tok = tiny
    (raw, _) = Engine(model, tok, anchors, tuple(SCORERS), batch_size=1).score(_encoded(tok))
    for name, spec in SCORERS.items():
        assert all(isinstance(raw.value(v), float) for v in (name, *spec.companions)), name
    assert raw.extra == {}  # every shipped value has its typed field
