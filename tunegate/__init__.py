"""tunegate: a fine-tuning safety gateway (OpenAI-compatible API, Celery workers, LoRA, safety gate)."""

__version__ = "0.1.0"
