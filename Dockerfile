# syntax=docker/dockerfile:1
#
# The nowcast forecast service: `python -m service` on port 8080, models/ baked in.
#
#   CPU (default):  docker build -t nowcast .
#   GPU:            docker build -t nowcast:cuda \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 \
#                     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 .
#                   docker run --gpus all -p 8080:8080 nowcast:cuda
#
# The CUDA wheels of torch carry the CUDA libraries, so the slim base with the cu126 index already
# runs on a GPU host; RUNTIME_IMAGE swaps in a CUDA runtime base where a deployment wants one. Python
# comes from the build stage (/usr/local) either way, so the runtime base needs glibc >= 2.36
# (Debian 12, Ubuntu 24.04). Settings are NOWCAST_* environment variables (see service/core/config.py).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with the package and its serving dependencies ------------------------
FROM ${PYTHON_IMAGE} AS build

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

# torch first, from the index that matches the target (the CPU wheels by default), so that installing
# the package below finds it satisfied instead of pulling the much larger default build
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY nowcast ./nowcast
COPY service ./service
# the package without its dev extra: no pytest, hypothesis, schemathesis, ruff in the image
RUN pip install --no-cache-dir /src

# --- runtime -------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY --from=build /usr/local/ /usr/local/
# On a CUDA base the copied Python needs its shared libraries registered (and a few installed);
# on the slim default they are all there and this only refreshes the linker cache.
# hadolint ignore=DL3008
RUN ldconfig \
    && if ! ldconfig -p | grep -q 'libffi.so.8'; then \
         apt-get update \
         && apt-get install -y --no-install-recommends libffi8 libexpat1 libsqlite3-0 libssl3t64 zlib1g \
            liblzma5 libbz2-1.0 ca-certificates \
         && rm -rf /var/lib/apt/lists/*; \
       fi \
    && groupadd --system --gid 10001 nowcast \
    && useradd --system --uid 10001 --gid nowcast --create-home --home-dir /home/nowcast \
         --shell /usr/sbin/nologin nowcast

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY models ./models

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NOWCAST_MODELS_DIR=/app/models

USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "service.healthcheck"]
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8080"]
