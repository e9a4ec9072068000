"""The services: what the API does as a product (tenancy, files, jobs, scans, moderation), apart from the
HTTP plumbing. Routes call them; they import no ``api.routes``, ``api.deps``, ``api.main`` or ``api.core``
(``tests/test_layers.py``), only each other, ``api.schemas`` and the floors below.

- ``crud``: database reads and locks for the routes, every lookup scoped to one organization (tenancy).
- ``estimate``: a running job's ``estimated_finish`` from its running stage's measured speed.
- ``file_store``: a staged file into a ``File`` row: purpose, filename, fine-tune checks, expiry, quota.
- ``job_create``: creating a job: validation, ``Idempotency-Key``, the active-job limit, dispatch.
- ``moderation``: what the console and the HTML report read: a job's report, header, timeline, the queue.
- ``policy_form``: the console's policy form: one field per ``KNOBS`` knob, a posted form read as updates.
- ``processing``: checks of uploaded training files: structural at upload, semantic after it; recovery.
- ``recovery``: the API's upkeep after a crash: storage sweeps, resuming files left ``uploaded``.
- ``scans``: safety scans: create and queue one, render it, page through its records.
- ``tokens``: example length in tokens at processing time (a ``tokenizer.json`` or an estimate).
- ``views``: rows into response objects (unix times, OpenAI names), scrubbing what the worker wrote.
"""
