"""Issue 29 (8): torch's default thread count (the host's cores) is capped at what the container allows."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tunegate.settings import Settings
from worker.ml import models


@pytest.fixture
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("restore_threads")
def test_the_default_is_capped_at_the_available_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)  # torch's default on a host with more cores than the container's quota
    monkeypatch.setattr(models, "available_cpus", lambda: 1)
    models.set_threads(Settings(torch_threads=0))
    assert torch.get_num_threads() == 1


@pytest.mark.usefixtures("restore_threads")
def test_an_explicit_setting_and_a_smaller_default_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "available_cpus", lambda: 1)
    models.set_threads(Settings(torch_threads=2))
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    monkeypatch.setattr(models, "available_cpus", lambda: 8)
    models.set_threads(Settings(torch_threads=0))
    assert torch.get_num_threads() == 1  # never raised above torch's own choice
