"""``cli.client``: the SDK's own retries ride out an unreachable API for ``follow``'s budget (issue 30 §4)."""

from __future__ import annotations

import time

import openai
import pytest

from cli.client import retries_for, sdk_client, wait
from cli.errors import WaitTimeout
from tests.api.server import free_port


@pytest.fixture
def shortest_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The SDK's retry sleeps, recorded instead of slept, at their shortest (its jitter takes 25 % off)."""
    slept: list[float] = []
    monkeypatch.setattr("openai._base_client.random", lambda: 1.0)
    monkeypatch.setattr(time, "sleep", slept.append)
    return slept


@pytest.mark.parametrize("budget", [0.0, 1.0, 20.0, 300.0])
def test_follow_backs_off_for_its_whole_budget_then_says_it_gave_up(
    budget: float, shortest_backoff: list[float]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(
        WaitTimeout, match=rf"^cannot reach the tunegate API at {url} \(gave up after \d+s\): "
    ):
        wait("ftjob-x", base_url=url, api_key="k", unreachable_s=budget, progress=False)
    # as few retries as cover the budget: the SDK's sleeps add up to it, one retry fewer would not
    assert len(shortest_backoff) == retries_for(budget)
    assert sum(shortest_backoff) >= budget
    assert not shortest_backoff or sum(shortest_backoff[:-1]) < budget


def test_other_commands_get_the_sdks_default_retries(shortest_backoff: list[float]) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with sdk_client(url, "k") as client, pytest.raises(openai.APIConnectionError):
        client.models.list()
    assert len(shortest_backoff) == openai.DEFAULT_MAX_RETRIES == 2
