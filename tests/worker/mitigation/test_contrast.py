"""The contrastive pool's answers: seeded choice, refusals left out, the per-base cache filled on demand."""

import json

from worker.mitigation.contrast import answered, cache_file, pool, pool_hash, refused


class Counting:
    """A stand-in generator: answers every prompt, refusing those with 'kill' in them."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        return ["" if "kill" in p.lower() else f"Here is how: {p}" for p in prompts]


def test_refused_uses_both_judges():
    assert refused("I'm sorry, but no.") and refused("No, that is not something to do.")
    assert not refused("Open Task Manager and end the task.")


def test_answered_generates_only_what_it_needs_then_reads_the_cache(tmp_path):
    path = cache_file(tmp_path, 96)
    assert path.name == f"answers-{pool_hash()}-t96.json"
    gen = Counting()
    items, stats = answered(20, seed=1, path=path, generate=gen, chunk=16)
    assert len(items) == 20 and len({i.prompt for i in items}) == 20
    assert all(i.answer == f"Here is how: {i.prompt}" and "kill" not in i.prompt.lower() for i in items)
    assert stats.generated == sum(len(c) for c in gen.calls) < len(pool())  # only as far as needed
    cache = json.loads(path.read_text())
    assert stats.cached == 0 and len(cache) == stats.generated
    assert stats.unusable == sum(1 for p in cache if "kill" in p.lower()) > 0
    assert all((v == "") == ("kill" in p.lower()) for p, v in cache.items())
    again = Counting()
    items2, stats2 = answered(20, seed=1, path=path, generate=again, chunk=16)
    assert items2 == items and again.calls == [] and stats2.generated == 0 and stats2.cached > 0


def test_answered_cycles_a_small_usable_pool_and_survives_a_broken_cache(tmp_path):
    path = tmp_path / "answers.json"
    path.write_text("{not json")
    items, stats = answered(400, seed=0, path=path, generate=Counting())
    usable = [p for p in pool() if "kill" not in p["prompt"].lower()]
    assert len(items) == 400 and len({i.prompt for i in items}) == len(usable)
    assert stats.generated == len(pool()) and json.loads(path.read_text())


def test_nothing_usable_gives_nothing(tmp_path):
    items, stats = answered(5, seed=0, path=tmp_path / "a.json", generate=lambda ps: [""] * len(ps))
    assert items == [] and stats.unusable == len(pool())
