# syntax=docker/dockerfile:1
#
# Container image of the retention purger.
#
#   docker build -t telecom-retention-purger:0.1.0 .
#   docker run --rm telecom-retention-purger:0.1.0 --help
#
# Two stages: `build` installs the package and its dependencies into a virtualenv; `runtime`
# copies only that virtualenv onto a fresh slim base, so pip, setuptools, wheel, the build
# context and any compiler never reach the final image. All dependencies ship wheels for
# CPython 3.11 on linux/amd64 and linux/arm64 (psycopg uses its [binary] wheel), so nothing is
# compiled. The final image runs as the numeric non-root user 10001 (so Kubernetes can verify
# runAsNonRoot), writes nothing to disk and works with a read-only root filesystem.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv

WORKDIR /src
# Metadata first, then the sources: a change in the code does not invalidate the base layers.
COPY pyproject.toml README.md ./
COPY purger/ ./purger/
COPY consumers/ ./consumers/

# A non-editable install: the wheel (with purger/sql/*.sql as package data) goes into
# site-packages. Then the installer tooling leaves the virtualenv, and the bytecode is compiled
# ahead of time because the root filesystem is read-only at run time.
RUN /opt/venv/bin/pip install --no-compile . \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
 && /opt/venv/bin/purger --help >/dev/null

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

ARG PURGER_UID=10001
ARG PURGER_GID=10001

LABEL org.opencontainers.image.title="telecom-retention-purger" \
      org.opencontainers.image.description="Event-driven retention purger for telecom records" \
      org.opencontainers.image.licenses="Apache-2.0"

# The base image's own pip is not needed at run time either.
RUN python -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel 2>/dev/null || true; \
    groupadd --system --gid "${PURGER_GID}" purger \
 && useradd --system --uid "${PURGER_UID}" --gid purger --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin purger

COPY --from=build /opt/venv /opt/venv
# The default retention policy; the Helm chart mounts its own over PURGER_POLICY_FILE.
COPY config/retention.yaml /etc/purger/retention.yaml

ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PURGER_POLICY_FILE=/etc/purger/retention.yaml \
    PURGER_HTTP_HOST=0.0.0.0 \
    PURGER_HTTP_PORT=9108 \
    PURGER_LOG_FORMAT=json

WORKDIR /tmp
USER ${PURGER_UID}:${PURGER_GID}
EXPOSE 9108

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PURGER_HTTP_PORT', '9108'), timeout=4)"]

ENTRYPOINT ["purger"]
CMD ["run"]
