#!/bin/sh
# First start of the compose stack's Postgres: one database each for Airflow and MLflow beside
# skulens' own (the run log), all owned by POSTGRES_USER.
set -eu
for db in airflow mlflow; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE $db OWNER \"$POSTGRES_USER\""
done
