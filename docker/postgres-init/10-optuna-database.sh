#!/bin/bash
# Runs once, when the postgres volume is new: the image creates $POSTGRES_DB (MLflow's database);
# Optuna gets its own database (both keep an `alembic_version` table, so they cannot share one).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE DATABASE ${OPTUNA_DB:-optuna} OWNER "$POSTGRES_USER";
SQL
