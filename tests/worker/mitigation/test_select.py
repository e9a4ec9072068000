"""Policy actions on tool-calling examples: down-weighting keeps the calls, the tools and the outputs."""

from __future__ import annotations

from pathlib import Path

from tunegate.conversation import check_example, load_examples
from worker.mitigation.select import apply, downweight

DATA = Path(__file__).resolve().parents[2] / "data" / "tools.jsonl"


def test_downweight_keeps_tool_calls_and_tools() -> None:
    for conv in load_examples(DATA):
        new = downweight(conv)
        assert [(m.role, m.content, m.tool_calls, m.tool_call_id) for m in new.messages] == [
            (m.role, m.content, m.tool_calls, m.tool_call_id) for m in conv.messages
        ]
        assert new.tools == conv.tools and new.parallel_tool_calls == conv.parallel_tool_calls
        last = max(i for i, m in enumerate(conv.messages) if m.role == "assistant")
        assert new.messages[last].weight == 0.0


def test_a_call_only_example_down_weighted_is_excluded() -> None:
    convs = load_examples(DATA)
    call_only = next(c for c in convs if c.messages[-1].tool_calls)  # its one assistant turn calls a tool
    multi = next(c for c in convs if len(c.text_replies) > 1 or len(c.user_turns) > 1)
    kept, log = apply(convs, [{"line": call_only.line}, {"line": multi.line}], "downweight")
    by_line = {e["line"]: e for e in log}
    assert by_line[call_only.line].get("excluded") is True and "excluded" not in by_line[multi.line]
    assert call_only.line not in {c.line for c in kept} and multi.line in {c.line for c in kept}
    assert all(check_example(c) == [] for c in kept)
