# syntax=docker/dockerfile:1
# callctl: one process owns the HTTP API and the SIP port (no workers).
#   docker build -t callctl .
#   docker run --rm -p 8000:8000 -p 5060:5060/udp -p 5060:5060/tcp \
#       -e CALLCTL_PUBLIC_ADDRESS=<host address reachable by SIP peers> callctl

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtualenv with callctl and its dependencies (wheels only) --------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/callctl
COPY pyproject.toml README.md ./
COPY app ./app
RUN /opt/callctl/bin/pip install . \
    && /opt/callctl/bin/python -c "import app.main, app.store.migrate"

# -- runtime: the virtualenv only, run as an unprivileged user ---------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 callctl \
    && useradd --system --uid 10001 --gid callctl --home-dir /var/lib/callctl \
       --create-home --shell /usr/sbin/nologin callctl
COPY --from=build /opt/callctl /opt/callctl
ENV PATH=/opt/callctl/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CALLCTL_HTTP_HOST=0.0.0.0 \
    CALLCTL_SIP_HOST=0.0.0.0 \
    CALLCTL_DATABASE_URL=sqlite+aiosqlite:////var/lib/callctl/callctl.db \
    CALLCTL_LOG_FORMAT=json
USER callctl
WORKDIR /var/lib/callctl
VOLUME ["/var/lib/callctl"]
EXPOSE 8000 5060/udp 5060/tcp
# RTP/RTCP media (CALLCTL_RTP_PORTS): publish the same range, e.g. -p 20000-20999:20000-20999/udp.
EXPOSE 20000-20999/udp
# python, not curl: the slim image has no curl. Follows CALLCTL_HTTP_PORT if overridden.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('CALLCTL_HTTP_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
# `serve` applies the migrations, then serves; SIGTERM stops it gracefully (exit 0).
ENTRYPOINT ["callctl"]
CMD ["serve"]
