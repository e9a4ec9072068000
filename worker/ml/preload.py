"""transformers' lazily imported names, imported once in a worker before any task runs.

transformers resolves ``from transformers import AutoConfig`` on first use through its lazy module, and two
threads doing that first import at once race: one gets ``ImportError: cannot import name 'AutoConfig'``. The
light worker runs short tasks in a threads pool, so two jobs validated side by side on a fresh worker failed
that way (the demo's risky job, 2026-12-07). ``preload`` runs at ``worker_init`` (``worker/celery_app.py``),
before the pool's threads exist.
"""

from __future__ import annotations

# every name the stages import from transformers (grep "from transformers import" worker/)
NAMES = ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM")


def preload() -> None:
    import transformers

    for name in NAMES:
        getattr(transformers, name)
