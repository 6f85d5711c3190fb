# syntax=docker/dockerfile:1
# optuna-dashboard on the studies' PostgreSQL database.
# Keep OPTUNA_VERSION equal to the workers' (docker/Dockerfile takes the same build arg from .env):
# Optuna refuses a storage whose schema another Optuna version created or upgraded.
FROM python:3.12-slim-bookworm

ARG OPTUNA_VERSION=5.0.0
ARG OPTUNA_DASHBOARD_VERSION=0.21.0
ARG UID=1000

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# gunicorn: optuna-dashboard serves with it when installed (threads) instead of wsgiref
RUN pip install "optuna==${OPTUNA_VERSION}" "optuna-dashboard==${OPTUNA_DASHBOARD_VERSION}" \
        "psycopg[binary]>=3.1" gunicorn \
    && useradd --create-home --uid "${UID}" dashboard

USER dashboard
WORKDIR /home/dashboard
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/api/meta', timeout=8)"]

# the storage URL comes from compose (without its password: libpq reads PGPASSWORD)
ENTRYPOINT ["optuna-dashboard", "--host", "0.0.0.0", "--port", "8080"]
