"""Shared fixtures: one tiny model (built once per session), its tokenizer and anchor features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.utils.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny(tiny_path: Path) -> tuple[Any, Any]:
    from worker.ml.models import load_model, load_tokenizer

    torch.manual_seed(0)
    return load_model(tiny_path), load_tokenizer(tiny_path)


@pytest.fixture(scope="session")
def anchors(tiny: tuple[Any, Any]) -> Any:
    from worker.scoring.anchors import compute_anchors

    model, tok = tiny
    return compute_anchors(model, tok, max_len=512, with_direction=True)
