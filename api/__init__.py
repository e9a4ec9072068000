"""tunegate's OpenAI-compatible REST API (``api.main:app``). Never imports torch/transformers/peft.

Endpoints (all under ``/v1`` need ``Authorization: Bearer <key>``; keys from ``tunegate keys create --org``):

    POST   /v1/files                          multipart file + purpose; fine-tune files checked while stored
    GET    /v1/files[?after&limit&order&purpose]
    GET    /v1/files/{id} | DELETE /v1/files/{id} | GET /v1/files/{id}/content
    POST   /v1/fine_tuning/jobs               optional Idempotency-Key header; extension body field `safety`
    GET    /v1/fine_tuning/jobs[?after&limit&metadata[k]=v]
    GET    /v1/fine_tuning/jobs/{id} | POST /v1/fine_tuning/jobs/{id}/cancel
    GET    /v1/fine_tuning/jobs/{id}/events | /checkpoints      newest first, cursor pages
    GET    /v1/fine_tuning/jobs/{id}/safety_report              extension: the gate's report.json
    GET    /v1/fine_tuning/jobs/{id}/safety_report.html         extension: the report as one page
    GET    /v1/fine_tuning/jobs/{id}/adapter                    extension: tar.gz; 403 unreleased or revoked
    GET    /v1/models[/{id}]                  configured bases + this org's released, unrevoked fine-tunes
    GET    /healthz                           no auth
    /console/...                              the moderator console (admin keys, a session cookie; HTML)

Error bodies are ``{"error": {"message", "type", "param", "code"}}`` (see api/core/errors.py); every response
has ``x-request-id``. Job objects carry extra fields ``safety`` (effective policy), ``stage``, ``progress``,
``cancel_requested`` and ``released``.

Layout (after FastAPI's full-stack template): ``main.py`` (the app), ``deps.py`` (request dependencies as
``Annotated`` aliases), ``schemas.py`` (request and response bodies), ``routes/`` (one module per resource),
``core/`` (the HTTP plumbing: authentication, errors, middleware, limits ...) and ``services/`` (what the
API does as a product: files, jobs, scans, moderation ...); each room's ``__init__`` lists its modules.
``fastpath.py`` serves the poll routes' usual requests in front of FastAPI's router (the one departure
from this layout, for throughput; its docstring and docs/architecture.md say why).
"""
