"""The first slice: upload a file and create a job through the real SDK, then see it enqueued by name (the
API sends ``start``: it knows no stage)."""

from __future__ import annotations

import openai

from tests.api.conftest import processed_file
from tests.utils.broker import queued_tasks
from tunegate import queue


def test_upload_and_create_job_enqueues_its_start(client: openai.OpenAI) -> None:
    file_id = processed_file(client)
    job = client.fine_tuning.jobs.create(model="smollm2-135m", training_file=file_id, suffix="demo")
    assert job.status == "validating_files"
    assert job.error is None and job.fine_tuned_model is None and job.trained_tokens is None
    assert job.hyperparameters.n_epochs == "auto"
    tasks = queued_tasks()
    assert (queue.START, [job.id]) in tasks
