# Two images from one file, both installing exactly the pinned requirements (pip --no-deps):
#   docker build --target cpu -t chexcurate:cpu .   API, CPU workers, migrations, the CLI   (requirements/cpu.txt)
#   docker build --target gpu -t chexcurate:gpu .   GPU workers and the trainer (CUDA)       (requirements/gpu.txt)
# Regenerate the locks with `make requirements` (requirements/lock.py says how each is made).
# Plain Dockerfile syntax (no `# syntax=` frontend to pull), so BuildKit and the classic builder both build it.
# Without an image registry: deploy/local-images.sh builds a Debian stand-in for PYTHON_IMAGE and compose.local.yml
# passes it in (docs/OPERATIONS.md, "Without an image registry").
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# torch's CUDA libraries come from its pinned pip wheels (CUDA 13, see requirements/gpu.txt); the base image only
# supplies the driver-facing setup (NVIDIA_* env, compat libs). Needs an NVIDIA driver >= 580 on the host.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu22.04

# what goes into both images besides their locked dependencies
FROM scratch AS source
COPY pyproject.toml README.md alembic.ini /app/
COPY migrations /app/migrations
COPY service /app/service
COPY workers /app/workers
COPY trainer /app/trainer

# ---------------------------------------------------------------------------------------------- CPU
FROM ${PYTHON_IMAGE} AS cpu-base
RUN useradd --create-home --uid 10001 --user-group chex && mkdir -p /data /indexes && chown chex:chex /data /indexes
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    NUMBA_CACHE_DIR=/tmp/numba MPLCONFIGDIR=/tmp/matplotlib

FROM cpu-base AS cpu-build
RUN python3 -m venv /opt/venv
# deploy/wheels/ holds wheels a host supplies itself (git-ignored; deploy/local-images.sh puts the pinned CPU torch
# there for hosts that cannot reach the PyTorch index). Copied before the lock, so a pin change keeps this layer.
COPY deploy/wheels/ /tmp/wheels/
COPY requirements/cpu.txt /tmp/requirements.txt
# torch's CPU build only exists on the PyTorch CPU index: install it from deploy/wheels/ when the pinned wheel is
# there, else from that index; then the rest of the lock from PyPI
RUN torch="$(grep '^torch==' /tmp/requirements.txt)" \
 && { pip install --no-deps --no-index --find-links /tmp/wheels "$torch" \
      || pip install --no-deps --index-url https://download.pytorch.org/whl/cpu "$torch"; } \
 && pip install --no-deps -r /tmp/requirements.txt

# the locked dependencies first and the source on top, so a code change rebuilds the last small layers only
FROM cpu-base AS cpu
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=source /app /app
# editable, so `chexcurate db upgrade` finds /app/migrations next to the package
RUN cd /app && pip install --no-deps --no-build-isolation -e . && pip check
USER 10001:10001
WORKDIR /data
# the API's liveness; docker-compose.yml gives the worker services a broker ping instead
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["chexcurate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------- GPU
FROM ${CUDA_IMAGE} AS gpu-base
ARG DEBIAN_FRONTEND=noninteractive
# Python 3.11 from the deadsnakes PPA (Ubuntu 22.04 ships 3.10)
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gnupg software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv libgomp1 \
 && apt-get purge -y software-properties-common gnupg && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --user-group chex && mkdir -p /data /indexes && chown chex:chex /data /indexes
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    NUMBA_CACHE_DIR=/tmp/numba MPLCONFIGDIR=/tmp/matplotlib

FROM gpu-base AS gpu-build
RUN python3.11 -m venv /opt/venv
COPY requirements/gpu.txt /tmp/requirements.txt
# PyPI's Linux torch wheel is the CUDA build; its NVIDIA libraries and triton are pinned in the lock
# faiss-gpu-cu12 brings its own CUDA 12 runtime and cuBLAS wheels beside torch's CUDA 13 ones (docs/OPERATIONS.md,
# "The CUDA image's torch and FAISS")
RUN pip install --no-deps -r /tmp/requirements.txt

FROM gpu-base AS gpu
COPY --from=gpu-build /opt/venv /opt/venv
COPY --from=source /app /app
RUN cd /app && pip install --no-deps --no-build-isolation -e . && pip check
USER 10001:10001
WORKDIR /data
# the GPU image is healthy while the driver initialises (docker-compose.yml adds a broker ping for workers)
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import ctypes, sys; sys.exit(ctypes.CDLL('libcuda.so.1').cuInit(0) != 0)"]
ENTRYPOINT ["chexcurate"]
CMD ["worker", "--queues", "curation,refresh", "--pool", "solo"]
