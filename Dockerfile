# The servegate image (IMAGE in serving/engines/kubernetes/names.py): the gateway, the operator and
# the replicas of the Kubernetes engine all run it.
#
#   docker build -t ghcr.io/servegate/servegate:0.1.0 .
#   docker build --build-arg TORCH=false -t ...    # no PyTorch runtime: a much smaller image
FROM python:3.11-slim

# PyTorch's CPU build, pinned as in pyproject.toml's [torch] extra: PyPI's default wheel pulls CUDA.
ARG TORCH=true
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric uid, so that Kubernetes' runAsNonRoot can check it (install.py runs as 10001).
RUN groupadd --system --gid 10001 servegate \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/servegate \
        --shell /usr/sbin/nologin servegate

# torch in a layer of its own: it stays cached while servegate's code changes.
RUN if [ "$TORCH" = "true" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"; \
    fi

COPY pyproject.toml README.md /src/
COPY serving /src/serving
COPY predictors /src/predictors
COPY router /src/router
COPY autoscaler /src/autoscaler
RUN pip install "/src[kubernetes,postgres,sklearn]" && rm -rf /src

USER 10001:10001
WORKDIR /home/servegate
EXPOSE 8080 8081
ENTRYPOINT ["servegate"]
CMD ["--help"]
