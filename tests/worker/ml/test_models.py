"""Model resolution: registry names, local directories, clear errors for unknown models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.tiny_model import build_tiny_model
from tunegate.errors import ModelError
from tunegate.settings import get_settings, reset_settings
from worker.ml.models import context_length, fingerprint, load_model, load_tokenizer, resolve_model


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    model = build_tiny_model(tmp_path / "tiny")
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNEGATE_MODELS", json.dumps({"tiny": str(model)}))
    reset_settings()
    yield model
    reset_settings()


def test_registry_name_and_path_resolve_to_the_same_model(env: Path) -> None:
    by_name = resolve_model("tiny", get_settings())
    by_path = resolve_model(str(env), get_settings())
    assert by_name.path == by_path.path == env
    assert by_name.fingerprint == by_path.fingerprint == fingerprint(env)
    model = load_model(env)
    assert context_length(model) == 512 and not model.training
    assert load_tokenizer(env).chat_template


def test_unknown_model_lists_the_known_ones(env: Path) -> None:
    with pytest.raises(ModelError, match="unknown model 'gpt-9'.*tiny"):
        resolve_model("gpt-9", get_settings())


def test_directory_without_config_is_rejected(env: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="not a Hugging Face model directory"):
        resolve_model(str(empty), get_settings())


def test_missing_chat_template_is_rejected(env: Path, tmp_path: Path) -> None:
    cfg = json.loads((env / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (env / "tokenizer_config.json").write_text(json.dumps(cfg))
    for f in env.glob("chat_template.*"):
        f.unlink()
    with pytest.raises(ModelError, match="no chat template"):
        load_tokenizer(env)


def test_fingerprint_is_a_content_hash_memoised_beside_the_weights(env: Path, tmp_path: Path) -> None:
    import os
    import shutil

    from worker.ml.models import FINGERPRINT_FILE

    first = fingerprint(env)
    assert (env / FINGERPRINT_FILE).is_file()
    copy = tmp_path / "copy"
    shutil.copytree(env, copy, ignore=shutil.ignore_patterns(FINGERPRINT_FILE))
    for f in copy.glob("*.safetensors"):  # a rebuild: the same bytes, a new mtime
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert fingerprint(copy) == first
    weights = sorted(copy.glob("*.safetensors"))[0]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight differs: another model, though the memo file is still there
    weights.write_bytes(bytes(data))
    assert fingerprint(copy) != first
    (env / FINGERPRINT_FILE).write_text('{"fingerprint": "stale", "config": "x", "weights": {}}')
    assert fingerprint(env) == first  # a memo that does not match the files is ignored
