# The kubetune images, one multi-target Dockerfile sharing one wheel build:
#
#   target        image (kubetune/common/images.py)   what runs in it
#   operator      <registry>/<prefix>/operator:<tag>  the kopf operator (no torch)
#   gateway       <registry>/<prefix>/gateway:<tag>   the OpenAI-compatible gateway sidecar
#   trainer-gpu   <registry>/<prefix>/trainer:<tag>   RayJob head/workers, batch Job, monitor
#                                                     CronJob, fetch init containers (CUDA torch)
#   trainer-cpu   .../trainer:<tag>-cpu               the same on CPU-only nodes (CPU torch)
#
# `make images` builds them with docker, podman or buildah and names them; by hand:
#   docker build --target gateway -t "$(scripts/images.py list | awk '$1 == "gateway" {print $2}')" .
# BASE_IMAGE is any Debian-like image with python3 (3.11+) and its venv module; CI builds from a
# Debian 12 root filesystem made locally with mmdebstrap.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS python-base
# PYTHONSAFEPATH: `python -m` never puts the working directory on sys.path (the source tree's
# operator/ folder would shadow the standard library's `operator` while the wheel is built).
# Pods run with a read-only root filesystem and any UID the manifests choose (1000 for training
# and serving pods, 65532 for the operator); HOME and Python's caches point at /tmp, an emptyDir.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/kubetune \
    PATH=/opt/kubetune/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    USER=kubetune
# An account for UID 1000 (getpass and Ray look the user up); no shell, no home of its own.
# Login shells reset PATH in /etc/profile; KubeRay starts Ray with `/bin/bash -lc`, so the venv
# goes back in front through /etc/profile.d.
RUN echo 'kubetune:x:1000:1000:kubetune:/tmp:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'kubetune:x:1000:' >> /etc/group \
 && echo 'export PATH="/opt/kubetune/bin:$PATH"' > /etc/profile.d/kubetune.sh

# The kubetune wheel, built once for every image.
FROM python-base AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kubetune kubetune
COPY crds crds
COPY operator operator
COPY trainer_image trainer_image
COPY serving serving
COPY monitoring monitoring
RUN python3 -m venv /tmp/build-venv \
 && /tmp/build-venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && rm -rf /tmp/build-venv

# One virtual environment per image; pip and setuptools are removed afterwards, so the final
# stages hold no installer or build tool.
FROM python-base AS operator-venv
COPY --from=wheel /wheels /wheels
RUN python3 -m venv "$VIRTUAL_ENV" \
 && set -- /wheels/kubetune-*.whl \
 && pip install "$1[operator]" \
 && pip uninstall -y -q pip setuptools

FROM python-base AS gateway-venv
COPY --from=wheel /wheels /wheels
RUN python3 -m venv "$VIRTUAL_ENV" \
 && set -- /wheels/kubetune-*.whl \
 && pip install "$1[gateway]" \
 && pip uninstall -y -q pip setuptools

# The CPU variant takes torch from PyTorch's CPU index (PyPI's Linux x86-64 torch is the CUDA
# build); an empty TORCH_INDEX_URL uses pip's configured sources.
FROM python-base AS trainer-cpu-venv
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY --from=wheel /wheels /wheels
RUN python3 -m venv "$VIRTUAL_ENV" \
 && pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0" \
 && set -- /wheels/kubetune-*.whl \
 && pip install "$1[trainer,monitoring,s3]" \
 && pip uninstall -y -q pip setuptools

FROM python-base AS trainer-gpu-venv
COPY --from=wheel /wheels /wheels
RUN python3 -m venv "$VIRTUAL_ENV" \
 && pip install "torch==2.13.0" \
 && set -- /wheels/kubetune-*.whl \
 && pip install "$1[trainer,monitoring,s3,qlora]" \
 && pip uninstall -y -q pip setuptools

# Training pods: KubeRay starts them with `/bin/bash -lc -- ulimit ...; ray start ...` and its
# injected probes run `wget ... | grep success`; local Ray workers preload tcmalloc when present.
FROM python-base AS trainer-runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget libtcmalloc-minimal4 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && command -v bash grep wget >/dev/null
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    TOKENIZERS_PARALLELISM=false
WORKDIR /tmp
USER 1000:1000
ENTRYPOINT ["kubetune"]
CMD ["--help"]

FROM trainer-runtime AS trainer-cpu
LABEL org.opencontainers.image.title="kubetune-trainer" \
      org.opencontainers.image.description="kubetune trainer (CPU torch): data preparation, Ray Train fine-tuning, evaluation, export, monitoring" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.kubetune.variant="cpu"
COPY --from=trainer-cpu-venv /opt/kubetune /opt/kubetune

FROM trainer-runtime AS trainer-gpu
LABEL org.opencontainers.image.title="kubetune-trainer" \
      org.opencontainers.image.description="kubetune trainer (CUDA torch, bitsandbytes): data preparation, Ray Train fine-tuning, evaluation, export, monitoring" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.kubetune.variant="gpu"
COPY --from=trainer-gpu-venv /opt/kubetune /opt/kubetune

FROM python-base AS gateway
LABEL org.opencontainers.image.title="kubetune-gateway" \
      org.opencontainers.image.description="OpenAI-compatible gateway: API keys, payload logs, safety scoring, canaries, metrics" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=gateway-venv /opt/kubetune /opt/kubetune
WORKDIR /tmp
USER 1000:1000
EXPOSE 8080
# SIGTERM reaches the gateway directly (no shell in between) and flushes the payload log.
ENTRYPOINT ["kubetune"]
CMD ["serve", "--upstream", "http://127.0.0.1:8000", "--host", "0.0.0.0", "--port", "8080"]

FROM python-base AS operator
LABEL org.opencontainers.image.title="kubetune-operator" \
      org.opencontainers.image.description="Reconciles FineTuneJob and ModelDeployment resources" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=operator-venv /opt/kubetune /opt/kubetune
WORKDIR /tmp
USER 1000:1000
ENV KUBETUNE_LOG_FORMAT=json
EXPOSE 8080 9090
ENTRYPOINT ["kubetune"]
CMD ["operator", "--standalone"]
