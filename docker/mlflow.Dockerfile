# syntax=docker/dockerfile:1
# MLflow tracking server: PostgreSQL backend store (psycopg 3), artifacts proxied (--serve-artifacts).
# Keep MLFLOW_VERSION equal to the workers' (docker/Dockerfile takes the same build arg from .env):
# a newer server upgrades the database schema at start, which older clients then cannot use.
FROM python:3.12-slim-bookworm

ARG MLFLOW_VERSION=3.17.2
ARG UID=1000

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

RUN pip install "mlflow==${MLFLOW_VERSION}" "psycopg[binary]>=3.1" \
    && useradd --create-home --uid "${UID}" mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts

USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000

# /health is exempt from the Host-header check and answers once the workers are up
HEALTHCHECK --interval=15s --timeout=10s --start-period=180s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=8)"]

# the backend store URL (without its password: libpq reads PGPASSWORD) and the rest come from compose
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", \
     "--serve-artifacts", "--artifacts-destination", "/mlartifacts"]
