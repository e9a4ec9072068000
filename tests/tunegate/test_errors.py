"""tunegate/errors.py: the two shapes an error takes outside the process."""

from __future__ import annotations

from tunegate.errors import InvalidConfig, StageTimeLimit


def test_the_job_error_is_the_api_body_without_its_type() -> None:
    exc = InvalidConfig("batch_size must be positive", param="batch_size")
    assert exc.job_error() == {
        "code": "invalid_config",
        "message": "batch_size must be positive",
        "param": "batch_size",
    }
    body = exc.to_dict()
    assert body.pop("type") == "invalid_request_error" and body == exc.job_error()
    assert StageTimeLimit("too long").job_error() == {
        "code": "stage_time_limit",
        "message": "too long",
        "param": None,
    }
