"""Job-create rejections (each names its field) and the safety policy that jobs may only tighten."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.api.conftest import new_key, processed_file, sdk
from tests.api.server import Server

MODEL = "smollm2-135m"

LR = "hyperparameters.learning_rate_multiplier"
BAD_BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "n_epochs_zero": ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    "n_epochs_51": ({"hyperparameters": {"n_epochs": 51}}, "hyperparameters.n_epochs"),
    "n_epochs_fraction": ({"hyperparameters": {"n_epochs": 1.5}}, "hyperparameters.n_epochs"),
    "n_epochs_bool": ({"hyperparameters": {"n_epochs": True}}, "hyperparameters.n_epochs"),
    "n_epochs_word": ({"hyperparameters": {"n_epochs": "many"}}, "hyperparameters.n_epochs"),
    "batch_size_zero": ({"hyperparameters": {"batch_size": 0}}, "hyperparameters.batch_size"),
    "batch_size_257": ({"hyperparameters": {"batch_size": 257}}, "hyperparameters.batch_size"),
    "lr_zero": ({"hyperparameters": {"learning_rate_multiplier": 0}}, LR),
    "lr_negative": ({"hyperparameters": {"learning_rate_multiplier": -1.0}}, LR),
    "method_n_epochs": (
        {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 99}}}},
        "method.supervised.hyperparameters.n_epochs",
    ),
    "contradicting": (
        {
            "hyperparameters": {"n_epochs": 2},
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
        },
        "hyperparameters.n_epochs",
    ),
    "metadata_17_pairs": ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    "metadata_long_value": ({"metadata": {"k": "v" * 513}}, "metadata"),
    "suffix_65": ({"suffix": "s" * 65}, "suffix"),
    "seed_negative": ({"seed": -1}, "seed"),
    "unknown_model": ({"model": "gpt-4o"}, "model"),
    "unknown_field": ({"frobnicate": 1}, "frobnicate"),
    "safety_loosen_gate": ({"safety": {"gate_delta": 0.9}}, "safety.gate_delta"),
    "safety_mitigation_off": ({"safety": {"mitigation": "none"}}, "safety.mitigation"),
    "safety_no_injection": ({"safety": {"inject_safety_examples": False}}, "safety.inject_safety_examples"),
    "safety_unknown_knob": ({"safety": {"yolo": True}}, "safety.yolo"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_job_body_is_422_naming_the_field(case: str, client: openai.OpenAI) -> None:
    fid = processed_file(client)
    extra, param = BAD_BODIES[case]
    body = {"model": MODEL, "training_file": fid, **extra}
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.post("/fine_tuning/jobs", body=body, cast_to=object)
    assert info.value.body["param"] == param, info.value.body  # type: ignore[index]
    assert param in info.value.message
    assert list(client.fine_tuning.jobs.list()) == []


def test_safety_can_tighten(client: openai.OpenAI) -> None:
    fid = processed_file(client)
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=fid,
        extra_body={"safety": {"mitigation": "drop", "gate_delta": 0.01, "mitigate_top_fraction": 0.2}},
    )
    safety = job.model_extra["safety"]  # type: ignore[index]
    assert safety["mitigation"] == "drop" and safety["gate_delta"] == 0.01
    assert safety["mitigate_top_fraction"] == 0.2


def test_org_policy_is_the_floor(server: Server) -> None:
    client = sdk(server, new_key(policy={"mitigation": "drop", "gate_delta": 0.01}))
    fid = processed_file(client)
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=fid)
    assert job.model_extra["safety"]["mitigation"] == "drop"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.fine_tuning.jobs.create(
            model=MODEL, training_file=fid, extra_body={"safety": {"gate_delta": 0.02}}
        )
    assert info.value.body["param"] == "safety.gate_delta"  # type: ignore[index]


def test_file_checks(client: openai.OpenAI, server: Server) -> None:
    other = sdk(server, new_key())
    foreign = processed_file(other)
    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.create(model=MODEL, training_file=foreign)
    assert missing.value.body["param"] == "training_file"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model=MODEL, training_file="file-doesnotexist")
    notes = client.files.create(file=("n.txt", b"x"), purpose="user_data")
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.fine_tuning.jobs.create(model=MODEL, training_file=notes.id)
    assert "purpose" in info.value.message and info.value.code == "invalid_file_purpose"
    fid = processed_file(client)
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.fine_tuning.jobs.create(model=MODEL, training_file=fid, validation_file=notes.id)
    assert info.value.body["param"] == "validation_file"  # type: ignore[index]


def test_unprocessed_file_is_rejected(client: openai.OpenAI) -> None:
    from models.db import session_scope
    from models.tables import File

    fid = processed_file(client)
    with session_scope() as session:
        row = session.get(File, fid)
        assert row is not None
        row.status = "uploaded"
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.fine_tuning.jobs.create(model=MODEL, training_file=fid)
    assert info.value.code == "file_not_ready" and "not 'processed'" in info.value.message


def test_unprepared_base_model_is_refused_at_creation(client: openai.OpenAI, server: Server) -> None:
    """Issue 11 item 7: a job for a base model that is not prepared was accepted and failed later."""
    from tunegate.model_cache import model_available
    from tunegate.settings import get_settings

    assert not model_available("smollm2-135m-aligned", get_settings())  # nothing built in the test home
    fid = processed_file(client)
    with pytest.raises(openai.APIStatusError) as info:
        client.fine_tuning.jobs.create(model="smollm2-135m-aligned", training_file=fid)
    err = info.value
    assert err.status_code in (400, 404, 422) and err.code == "model_not_available"
    assert err.body["param"] == "model"  # type: ignore[index]
    # Issue 28: it says what is missing and the command that builds it (no path of the server)
    assert "has not been built" in err.message and "`tunegate models prepare --aligned`" in err.message
    assert str(server.home) not in err.message
    assert list(client.fine_tuning.jobs.list()) == []
    listed = {m.id: m for m in client.models.list()}
    aligned = listed["smollm2-135m-aligned"].model_dump()
    assert aligned["ready"] is False and "tunegate models prepare --aligned" in aligned["status_details"]
    assert listed["smollm2-135m"].model_dump()["ready"] is True  # its GGUF is installed: converted on use
