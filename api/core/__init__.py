"""The plumbing: HTTP machinery every route relies on and no product rule lives in. Imports nothing of
``api.services``, ``api.routes``, ``api.deps``, ``api.schemas`` or ``api.main`` (``tests/test_layers.py``).

- ``auth``: API-key authentication: the ``Authorization: Bearer`` header, the cache of a key's organization.
- ``console_auth``: the console's authentication: login (throttled), server-side sessions, cookies, CSRF.
- ``edge``: the request edge's text check (400 for a lone UTF-16 surrogate in any string of a request).
- ``errors``: the one mapping from errors to HTTP answers in the OpenAI error shape, with ``x-request-id``.
- ``metrics``: Prometheus: request timing (a middleware) and the exposition that ``GET /metrics`` serves.
- ``middleware``: request ids and per-request logging, body limits while the body is read, the abuse guard.
- ``multipart``: streaming ``multipart/form-data`` into a staged file; the file checks' thread limiter.
- ``ratelimit``: the per-organization rate limit, failed-authentication windows, requests in flight.
- ``responses``: answers built by hand: JSON serialized once, console pages and redirects with their headers.
"""
