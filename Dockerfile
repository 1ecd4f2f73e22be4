# syntax=docker/dockerfile:1
#
# The nowcast forecast service: `python -m service` on port 8080, models/ baked in.
#
#   CPU (default):  docker build -t nowcast .
#   GPU:            docker build -t nowcast:cuda --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
#                   docker run --gpus all -p 8080:8080 nowcast:cuda
#
# PyPI's Linux wheel of torch is the CUDA build and carries the CUDA libraries (nvidia-* wheels), so
# the same base runs on a GPU host. Build arguments:
#   PYTHON_IMAGE / RUNTIME_IMAGE  the bases (default python:3.11-slim-bookworm). The virtual environment
#       links to the build base's interpreter (/usr/local/bin/python3 on python:*-slim, /usr/bin/python3
#       on a Debian-packaged python such as scripts/make-base-image.sh's): the runtime base must have it at
#       the same path. /usr/local is copied from the build stage, so a python:*-slim build also runs on
#       another glibc >= 2.36 base (Debian 12, Ubuntu 24.04, a CUDA runtime image); the build stops if not.
#   TORCH_INDEX_URL / TORCH_VERSION  where torch comes from (default: the CPU wheels of download.pytorch.org).
#   --build-context wheels=DIR  a folder of wheels tried before the indexes (e.g. a local CPU torch wheel).
#   PIP_INDEX_URL / PIP_EXTRA_INDEX_URL  a PyPI mirror; --secret id=pip_cert,src=CA.pem: the CA bundle
#       of a TLS-intercepting proxy (read during the build only, never stored in the image).
# scripts/container-check.sh builds, runs and checks the image (podman or docker).
# Settings are NOWCAST_* environment variables (see service/core/config.py).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=python:3.11-slim-bookworm

# --- wheels: empty unless --build-context wheels=DIR -------------------------------------------------------
FROM scratch AS wheels

# --- build: a virtual environment with the package and its serving dependencies ------------------------
FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_FIND_LINKS=/wheels \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

# pysteps is published as source only: its C extensions (OpenMP) need a compiler, and on a Debian-packaged
# Python its headers. Both stay in this stage.
# hadolint ignore=DL3008
RUN set -- gcc libc6-dev \
    && include=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])') \
    && if [ ! -e "$include/Python.h" ]; then \
         set -- "$@" "python$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')-dev"; \
       fi \
    && apt-get update \
    && apt-get install -y --no-install-recommends "$@" \
    && rm -rf /var/lib/apt/lists/*

# torch first, from the wheels folder or the index that matches the target (the CPU wheels by default), so
# that installing the package below finds it satisfied instead of pulling the much larger default build.
# The venv's pip comes from the base's ensurepip (Debian's is 23.0): upgraded, then dropped at the end.
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/venv \
    && pip install --no-cache-dir --upgrade "pip>=24" \
    && if [ -n "$(find /wheels -maxdepth 1 -name "torch-${TORCH_VERSION}[-+]*.whl" -print -quit)" ]; then \
         pip install --no-cache-dir "torch==${TORCH_VERSION}"; \
       else \
         pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
       fi

WORKDIR /src
COPY pyproject.toml README.md ./
COPY nowcast ./nowcast
COPY service ./service
# the package without its dev extra: no pytest, hypothesis, schemathesis, ruff in the image; then what
# serving never reads (C++ headers, the packages' own tests, pip itself)
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install --no-cache-dir /src \
    && site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    && rm -rf "$site"/torch/include "$site"/torch/share/cmake "$site"/*/tests "$site"/*/*/tests \
    && python -m pip uninstall --yes pip

# --- runtime -------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY --from=build /usr/local/ /usr/local/
# pysteps' extensions need libgomp1 (python:*-slim lacks it); on a CUDA base a copied python:*-slim
# interpreter also needs its shared libraries registered and a few installed. Nothing is installed where
# the base has them all (scripts/make-base-image.sh's): then this only refreshes the linker cache.
# hadolint ignore=DL3008
RUN ldconfig \
    && set -- \
    && if ! ldconfig -p | grep -q 'libgomp.so.1'; then set -- libgomp1; fi \
    && if ! ldconfig -p | grep -q 'libffi.so.8'; then \
         set -- "$@" libffi8 libexpat1 libsqlite3-0 libssl3t64 zlib1g liblzma5 libbz2-1.0 ca-certificates; \
       fi \
    && if [ "$#" -gt 0 ]; then \
         apt-get update \
         && apt-get install -y --no-install-recommends "$@" \
         && rm -rf /var/lib/apt/lists/*; \
       fi \
    && groupadd --system --gid 10001 nowcast \
    && useradd --system --uid 10001 --gid nowcast --create-home --home-dir /home/nowcast \
         --shell /usr/sbin/nologin nowcast

COPY --from=build /opt/venv /opt/venv
# the venv's interpreter must exist on this base (see RUNTIME_IMAGE above)
RUN /opt/venv/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || { echo "RUNTIME_IMAGE lacks the interpreter $(readlink /opt/venv/bin/python) of the build stage" >&2; exit 1; }
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
