"""Property-based run over /openapi.json (Schemathesis + Hypothesis): no input makes the server answer 5xx.

The default suite runs a short pass (25 examples per operation, 60 s budget); ``-m slow`` adds a longer one
(``LONG_EXAMPLES_PER_OPERATION`` per operation, no budget) whose command and counts are recorded in
docs/reliability.md ("Fuzzing").
"""

from __future__ import annotations

import time
from collections import Counter

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis.checks import not_a_server_error

from tests.api.conftest import new_key
from tests.api.server import Server

EXAMPLES_PER_OPERATION = 25
TIME_BUDGET_S = 60.0
LONG_EXAMPLES_PER_OPERATION = 500


def _fuzz(server: Server, examples: int, budget_s: float | None) -> tuple[int, Counter[int]]:
    """Run every operation with ``examples`` generated cases; returns (operations run, status counts)."""
    headers = {"Authorization": f"Bearer {new_key(rate_limit_per_minute=1_000_000)}"}
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json", headers=headers)
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 12
    ran = 0
    for operation in operations:
        if budget_s is not None and time.monotonic() - started > budget_s:
            break
        ran += 1

        @given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.generate],
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call_and_validate(
                base_url=server.base_url, headers=headers, checks=[not_a_server_error]
            )
            statuses[response.status_code] += 1

        check()
    return ran, statuses


def test_no_server_errors(server: Server) -> None:
    _, statuses = _fuzz(server, EXAMPLES_PER_OPERATION, TIME_BUDGET_S)
    assert sum(statuses.values()) >= 100 and any(200 <= s < 300 for s in statuses)
    assert all(s < 500 for s in statuses)


@pytest.mark.slow
def test_no_server_errors_long_run(server: Server) -> None:
    started = time.monotonic()
    ran, statuses = _fuzz(server, LONG_EXAMPLES_PER_OPERATION, None)
    print(
        f"\nfuzz ({server.backend}): {ran} operations, {sum(statuses.values())} cases, "
        f"statuses {dict(sorted(statuses.items()))}, {time.monotonic() - started:.0f} s"
    )
    assert sum(statuses.values()) >= 10 * LONG_EXAMPLES_PER_OPERATION
    assert all(s < 500 for s in statuses)
