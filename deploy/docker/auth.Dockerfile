# syntax=docker/dockerfile:1
# The auth image: users, API keys and RS256 JWTs (JWKS).
# It holds only the switchyard-auth distribution and libs/common (plus their
# third-party dependencies), never another service's code.
#
#   docker build -f deploy/docker/auth.Dockerfile -t switchyard-auth:dev .   # from the repo root
#
# No lock file is committed: uv resolves the workspace at build time within the exact pins
# of the root pyproject.toml ([tool.uv] constraint-dependencies), as `make install` does.
# The image holds no secrets; they arrive as environment variables and mounted files.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: resolve and install into /opt/venv ----------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ARG UV_VERSION=0.13.8
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"

# The venv has the same path in both stages so its scripts' shebangs survive the copy;
# bytecode is compiled here because the runtime root filesystem is read-only.
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3

WORKDIR /src

# 1. Third-party dependencies from project metadata only, so this layer is rebuilt only
#    when a pyproject.toml changes. uv resolves the whole workspace, so every member's
#    pyproject.toml is needed (metadata only, no code); --package installs just this one.
COPY pyproject.toml ./
COPY libs/common/pyproject.toml libs/common/
COPY services/gateway/pyproject.toml services/gateway/
COPY services/auth/pyproject.toml services/auth/
COPY services/history/pyproject.toml services/history/
COPY services/inference/pyproject.toml services/inference/
COPY tools/simulator/pyproject.toml tools/simulator/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --no-dev --package switchyard-auth --no-install-workspace

# 2. Only this service's source and the shared library, installed as wheels (--no-editable)
#    so the runtime stage needs /opt/venv and nothing else.
COPY libs/common/src libs/common/src
COPY services/auth/src services/auth/src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --no-dev --no-editable --package switchyard-auth \
    && /opt/venv/bin/switchyard auth --help >/dev/null

# --- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="switchyard-auth" \
      org.opencontainers.image.description="Switchyard auth: users, API keys and RS256 JWTs (JWKS)."

# A fixed numeric uid/gid (10001) so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin switchyard \
    && mkdir -p /app \
    && chown 10001:10001 /app

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /app
USER 10001:10001
EXPOSE 8001

# Probes live in docker-compose.yml and deploy/k8s: GET /livez and /readyz on port 8001.
# Exec form: the service is PID 1 and receives SIGTERM itself (graceful shutdown).
ENTRYPOINT ["switchyard"]
CMD ["auth", "--host", "0.0.0.0", "--port", "8001"]
