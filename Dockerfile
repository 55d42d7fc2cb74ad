# dsar: one image for the API, the workers, the scheduler and migrations (docker-compose.yml, docs/deployment.md).
# A non-editable install: the image holds the installed package, not the source tree; no dev dependencies.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml README.md ./
COPY connectors connectors
COPY discovery discovery
COPY workers workers
COPY sandbox sandbox
RUN pip install . && rm -rf /build
# A default configuration; the stack mounts its own ./config here read-only (settings and data map, no rebuild).
COPY config /etc/dsar
ENV DSAR_CONFIG=/etc/dsar/dsar.toml
RUN useradd --system --home-dir /var/dsar --shell /usr/sbin/nologin dsar && mkdir -p /var/dsar && chown dsar /var/dsar
USER dsar
WORKDIR /var/dsar
ENTRYPOINT ["dsar"]
CMD ["worker"]
