#!/bin/bash
# First start of an empty Postgres volume only (docker-entrypoint-initdb.d): one database per
# service, owned by POSTGRES_USER. MLflow and Prefect create their tables on first start.
set -euo pipefail
for db in mlflow prefect; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -c "CREATE DATABASE $db OWNER \"$POSTGRES_USER\""
done
