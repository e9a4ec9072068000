"""Property-based run over /openapi.json (Schemathesis + Hypothesis): no input makes the server answer 5xx."""

from __future__ import annotations

import time

import hypothesis
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis.checks import not_a_server_error

from tests.api.conftest import new_key
from tests.api.server import Server

EXAMPLES_PER_OPERATION = 25
TIME_BUDGET_S = 60.0


def test_no_server_errors(server: Server) -> None:
    headers = {"Authorization": f"Bearer {new_key(rate_limit_per_minute=1_000_000)}"}
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json", headers=headers)
    statuses: list[int] = []
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 12
    for operation in operations:
        if time.monotonic() - started > TIME_BUDGET_S:
            break

        @given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
        def check(case: schemathesis.Case) -> None:
            response = case.call_and_validate(base_url=server.base_url, headers=headers,
                                              checks=[not_a_server_error])
            statuses.append(response.status_code)

        check()
    assert len(statuses) >= 100 and any(200 <= s < 300 for s in statuses)
    assert all(s < 500 for s in statuses)
