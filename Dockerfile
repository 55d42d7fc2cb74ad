FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY connectors connectors
COPY discovery discovery
COPY workers workers
COPY sandbox sandbox
COPY config config
RUN pip install -e . && useradd --system --home /app dsar && mkdir -p /var/dsar && chown dsar /var/dsar
USER dsar
ENTRYPOINT ["dsar"]
CMD ["worker"]
