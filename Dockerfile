# bulkd in a container: the daemon, its status server and the dashboard.
#
#   docker build -t bulkd .
#   docker run --read-only --tmpfs /tmp -e BULKD_API_TOKEN -e BULKD_STATUS_TOKEN \
#     -v "$PWD/exchange:/data/files" -v bulkd-spool:/data/spool -v bulkd-state:/data/state \
#     -v "$PWD/bulkd.toml:/etc/bulkd/bulkd.toml:ro" -p 127.0.0.1:8780:8780 bulkd
#
# Configuration: the TOML mounted at /etc/bulkd/bulkd.toml (the image ships the example) plus
# BULKD_* variables, which win over the file. The directories below are fixed by the image's
# volumes. Secrets only by environment or mounted files (BULKD_API_TOKEN[_FILE],
# BULKD_STATUS_TOKEN[_FILE]); the status server listens on all interfaces, so it needs its token.
# docker-compose.yml runs it beside the Lexer simulator.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bulkd ./bulkd
# Every dependency ships manylinux wheels; the compiler is for bulkd's own C extensions, the
# one-pass NDJSON writer (bulkd/_jsonl.c, ~4x faster encoding than the Arrow fallback) and the
# pattern walk and cell census (bulkd/_match.c, ~3x faster than RE2), and stays in this stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/bulkd \
    && /opt/bulkd/bin/pip install --no-cache-dir . \
    && mkdir -p /data/files /data/spool /data/state

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="bulkd" \
      org.opencontainers.image.description="Inbox to validated gzip NDJSON chunks for Lexer's Bulk Write API" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/bulkd /opt/bulkd
COPY --from=build --chown=10001:10001 /data /data
COPY config/bulkd.example.toml /etc/bulkd/bulkd.toml

# /data/files holds inbox/, work/, done/ and failed/ on one filesystem, since files move between
# them by rename; spool and state (the SQLite ledger) are volumes of their own.
ENV PATH=/opt/bulkd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BULKD_DATA_DIR=/data \
    BULKD_INBOX_DIR=/data/files/inbox \
    BULKD_INBOX_WORK_DIR=/data/files/work \
    BULKD_INBOX_DONE_DIR=/data/files/done \
    BULKD_INBOX_FAILED_DIR=/data/files/failed \
    BULKD_SPOOL_DIR=/data/spool \
    BULKD_STATE_DIR=/data/state \
    BULKD_SIMULATOR_STORE_DIR=/data/state/hubsim \
    BULKD_STATUS_HOST=0.0.0.0 \
    BULKD_STATUS_PORT=8780 \
    BULKD_SERVICE_LOG_FORMAT=json

USER 10001:10001
WORKDIR /data
VOLUME ["/data/files", "/data/spool", "/data/state"]
EXPOSE 8780

HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["bulkd", "status", "--healthz", "--config", "/etc/bulkd/bulkd.toml"]

# Exec form: bulkd is PID 1 and gets SIGTERM itself (it drains in-flight uploads, then exits 0).
ENTRYPOINT ["bulkd"]
CMD ["run", "--config", "/etc/bulkd/bulkd.toml"]
