# syntax=docker/dockerfile:1
# CPU image of chexcurate: the engine, offline curation and the CLI. The CUDA build (torch + faiss-gpu)
# for GPU workers and the trainer is added as a second target when those land.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

FROM base AS build
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY service service
COPY workers workers
COPY trainer trainer
RUN pip install '.[cpu]'

FROM base AS cpu
COPY --from=build /usr/local /usr/local
RUN useradd --create-home --uid 10001 chex && mkdir -p /data && chown chex /data
USER chex
ENV NUMBA_CACHE_DIR=/tmp/numba
WORKDIR /data
HEALTHCHECK CMD ["chexcurate", "--help"]
ENTRYPOINT ["chexcurate"]
CMD ["demo", "--out-dir", "/data/demo"]
