# syntax=docker/dockerfile:1
# Build stage: resolve the locked dependencies into a virtualenv.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project --python /usr/local/bin/python3
COPY src ./src
RUN uv sync --frozen --no-dev --no-editable --python /usr/local/bin/python3

# Runtime stage: the virtualenv, migrations and nothing else, as a non-root user.
FROM python:3.11-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 stripesync \
 && useradd --system --uid 10001 --gid stripesync --home-dir /app --shell /usr/sbin/nologin stripesync \
 && install -d -o stripesync -g stripesync /app /app/var
WORKDIR /app
COPY --from=build --chown=stripesync:stripesync /app/.venv /app/.venv
COPY --chown=stripesync:stripesync alembic.ini ./
COPY --chown=stripesync:stripesync migrations ./migrations
ENV PATH="/app/.venv/bin:$PATH" PYTHONUNBUFFERED=1 STRIPESYNC_DATA_DIR=/app/var
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# Migrations run as their own step: `docker run IMAGE stripesync migrate`.
CMD ["stripesync", "serve", "--host", "0.0.0.0", "--port", "8000"]
