# The operator image: Kopf running nas_operator.cluster.handlers, with Ax/BoTorch on CPU torch.
#   docker build -t ghcr.io/nas-operator/operator:0.1.0 .
# The environment comes from scripts/install-env, the same command (and lock) that CI's setup
# runs, so a green CI has installed exactly this dependency set.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY requirements.lock pyproject.toml README.md ./
COPY scripts/install-env scripts/install-env
COPY operator operator
COPY trainer-image/nas_trainer trainer-image/nas_trainer
RUN scripts/install-env /opt/venv/bin/python --torch cpu \
    && /opt/venv/bin/python -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE}
# A read-only root filesystem is fine: nothing is written outside /tmp (an emptyDir in the
# chart); byte code was compiled at build time and matplotlib's cache goes to /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    NAS_METRICS_ROOT=/nas-logs \
    NAS_METRICS_PORT=8080
COPY --from=build /opt/venv /opt/venv
RUN useradd --uid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin nas
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["kopf", "run", "-m", "nas_operator.cluster.handlers"]
CMD ["--all-namespaces", "--liveness=http://0.0.0.0:8081/healthz"]
