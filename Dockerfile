# VoiceBridge production image: one container, any number of Fly machines.
#
# Two stages: the builder resolves the locked runtime dependencies with uv into a
# virtualenv; the runtime stage gets only that virtualenv, so neither uv, the build
# tools, the tests nor any dev dependency ships. No secret and no .env is ever copied
# in: Fly injects secrets as environment variables when a machine boots.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS builder

# uv comes from PyPI with pip (no extra image registry needed); pinned for
# reproducible builds. Bump it together with the uv that writes uv.lock.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"

# Compile bytecode at install time (faster cold start, and the non-root runtime user
# could not write __pycache__ anyway); copy rather than hard-link out of uv's cache;
# build against the image's own interpreter, never a downloaded one.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/opt/venv

WORKDIR /build

# Dependencies first, in their own layer: it is rebuilt only when the lock changes (the
# project's metadata names no readme, so a README edit rebuilds nothing).
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --no-install-project

# Then the application itself, installed as a regular (non-editable) package so the
# runtime stage needs nothing from /build.
COPY voicebridge ./voicebridge
RUN uv sync --locked --no-dev --no-editable


FROM python:${PYTHON_VERSION}-slim AS runtime

# An unprivileged user; its working directory is the only writable place the app
# needs (relative defaults such as transcripts/ and spool/ land there). Files on a
# Fly machine's root filesystem are ephemeral: transcripts belong in the bucket.
RUN groupadd --system --gid 10001 voicebridge \
    && useradd --system --uid 10001 --gid voicebridge --no-create-home \
        --home-dir /srv/voicebridge --shell /usr/sbin/nologin voicebridge \
    && mkdir -p /srv/voicebridge \
    && chown voicebridge:voicebridge /srv/voicebridge

# The virtualenv stays owned by root: the app cannot rewrite its own code.
COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PORT=8080

WORKDIR /srv/voicebridge
# Numeric, so the runtime can tell it is not root without reading /etc/passwd.
USER 10001:10001

# fly.toml's [http_service] internal_port must match (a test checks it).
EXPOSE 8080

# The server drains live calls on SIGTERM (fly.toml: kill_signal / kill_timeout).
STOPSIGNAL SIGTERM

# Same entry point as `voicebridge serve`; it reads $PORT. Other commands run as
# `fly ssh console -C "voicebridge …"` (e.g. transcripts retention). Fly runs its
# own health checks from fly.toml, so there is no Docker HEALTHCHECK here.
ENTRYPOINT ["voicebridge"]
CMD ["serve", "--host", "0.0.0.0"]
