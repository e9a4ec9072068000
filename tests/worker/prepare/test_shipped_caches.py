"""The shipped base's caches: every file the current code reads for the shipped base is shipped and reads
back; ``install`` copies them only for the model they were computed on and never over a file; ``export``
ships exactly what ``expected`` names and refuses what is missing or of another model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunegate import schema
from tunegate.errors import ModelError
from tunegate.settings import EMBEDDED_BASE, get_settings, reset_settings
from worker.evaluation import cache
from worker.evaluation.model_eval import ModelRun
from worker.evaluation.probe_judge import TrainedProbe
from worker.ml.models import resolve_model
from worker.prepare import shipped, shipped_caches
from worker.scoring import reference

FP = "0123456789abcdef"


def _ship(directory: Path, fingerprint: str, files: dict[str, str]) -> None:
    """A shipped directory whose build folds into ``fingerprint``, with cache ``files`` (path: text)."""
    directory.mkdir(parents=True)
    (directory / shipped.ADAPTER_WEIGHTS).write_bytes(b"")
    build = shipped.ShippedBuild("a" * 16, fingerprint, {}, {})
    (directory / shipped.BUILD_FILE).write_text(json.dumps(schema.write(build)))
    for rel, text in files.items():
        f = directory / shipped_caches.CACHES / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)


def test_every_cache_the_code_reads_for_the_shipped_base_is_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = shipped.ShippedBuild.read()
    assert build is not None, "tunegate/data/aligned/ ships no adapter"
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    reset_settings()
    settings = get_settings()
    layers = shipped_caches.layers(resolve_model(EMBEDDED_BASE, settings).path)
    want = shipped_caches.expected(settings, build.fingerprint, layers)
    assert [len(want[shipped_caches.SCORING]), len(want[shipped_caches.EVAL])] == [1, 2]
    root = shipped.SHIPPED_DIR / shipped_caches.CACHES
    (ref,) = want[shipped_caches.SCORING]
    scores = reference.load(root / shipped_caches.SCORING / ref)
    assert scores is not None and all(len(v) > 100 for v in scores.values()), f"{ref} is not shipped"
    probe, run = (root / shipped_caches.EVAL / f for f in want[shipped_caches.EVAL])
    # read as the evaluate stage reads its cache (a miss would be None: computed again on every first run)
    trained = cache.load(probe.parent, probe.stem, TrainedProbe.from_dict)
    assert trained is not None and trained.key == probe.stem, f"{probe} is not shipped or not current"
    chat = cache.load(run.parent, run.stem, ModelRun.from_dict)
    assert chat is not None and len(chat.harmful) > 100, f"{run} is not shipped or not current"
    shipped_files = {p.relative_to(root) for p in root.rglob("*.json")}
    assert shipped_files == {Path(part, f) for part, files in want.items() for f in files}  # nothing stale


def test_install_copies_only_for_its_model_and_never_over_a_file(tiny_registry: Path, tmp_path: Path) -> None:
    settings = get_settings()
    ship = tmp_path / "aligned"
    _ship(ship, FP, {"scoring-cache/reference-x.json": "{}", "eval-cache/probes/p.json": "[1]"})
    assert shipped_caches.install(settings, "f" * 16, ship) == []  # computed on another model: not here
    off = settings.model_copy(update={"shipped_caches": False})
    assert shipped_caches.install(off, FP, ship) == []  # the provider computes every cache itself
    assert shipped_caches.applies(settings, FP, ship) and not shipped_caches.applies(off, FP, ship)
    assert not settings.scoring_cache_path(FP).exists()
    got = shipped_caches.install(settings, FP, ship)
    ref = settings.scoring_cache_path(FP) / "reference-x.json"
    assert got == [ref, settings.eval_cache_path / "probes" / "p.json"]
    ref.write_text('{"mine": 1}')
    assert shipped_caches.install(settings, FP, ship) == []
    assert ref.read_text() == '{"mine": 1}'  # what the home computed or holds stays
    assert not list(ref.parent.glob("*.tmp"))


def test_export_ships_what_expected_names_and_refuses_what_is_missing(
    tiny_registry: Path, tmp_path: Path
) -> None:
    settings = get_settings()
    want = shipped_caches.expected(settings, FP, 4)
    where = shipped_caches.targets(settings, FP)
    dest = tmp_path / "aligned"
    _ship(dest, FP, {"eval-cache/stale.json": "{}"})
    with pytest.raises(ModelError, match="not cached here yet: .*reference-"):
        shipped_caches.export(settings, FP, 4, dest)
    for part, files in want.items():
        for i, f in enumerate(files):
            (where[part] / f).parent.mkdir(parents=True, exist_ok=True)
            (where[part] / f).write_text(json.dumps({"b": i, "a": [1.5, part]}, indent=2))
    written = shipped_caches.export(settings, FP, 4, dest)
    root = dest / shipped_caches.CACHES
    assert sorted(written) == sorted(root / p / f for p, files in want.items() for f in files)
    assert not (root / "eval-cache" / "stale.json").exists()  # replaced as a whole
    assert written[0].read_text() == '{"a":[1.5,"scoring-cache"],"b":0}\n'
    with pytest.raises(ModelError, match="folds into ffffffffffffffff"):
        shipped_caches.export(settings, FP, 4, _other(tmp_path))


def _other(tmp_path: Path) -> Path:
    other = tmp_path / "other"
    _ship(other, "f" * 16, {})
    return other
