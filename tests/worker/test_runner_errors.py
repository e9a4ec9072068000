"""worker/runner.py: the error a failed job (and a failed safety scan, worker/scan.py) stores, from the
error that ended its stage: exactly {code, message, param}, scrubbed of server paths."""

from __future__ import annotations

from pathlib import Path

from tunegate.errors import InvalidFile, ModelError, NotFound, TunegateError
from tunegate.redact import SERVER_PATH
from tunegate.settings import get_settings
from worker.runner import _error_of


def test_a_stage_error_keeps_its_code_and_param_and_loses_server_paths(tunegate_home: Path) -> None:
    where = get_settings().home_dir / "files" / "file-x"
    exc = NotFound(f"file-x is gone from {where}", param="file_id")
    assert _error_of(exc, model="m") == {
        "code": "not_found",
        "message": f"file-x is gone from {SERVER_PATH}",
        "param": "file_id",
    }


def test_codes_of_a_bad_file_and_of_an_error_without_one(tunegate_home: Path) -> None:
    bad = InvalidFile("not JSON", line=3, filename="train.jsonl")
    assert _error_of(bad, model="m") == {
        "code": "invalid_training_file",
        "message": "train.jsonl, line 3: not JSON",
        "param": "file",
    }
    assert _error_of(TunegateError("it broke"), model="m") == {
        "code": "job_failed",
        "message": "it broke",
        "param": None,
    }


def test_a_model_that_cannot_load_is_not_available(tunegate_home: Path) -> None:
    exc = ModelError(f"cannot convert {get_settings().models_path}/tiny: bad header")
    assert _error_of(exc, model="tiny") == {
        "code": "model_not_available",
        "message": "The base model 'tiny' is not available on this service right now; try again later or "
        "choose another base model.",
        "param": "model",
    }
