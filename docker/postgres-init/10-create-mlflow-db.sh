#!/bin/sh
# MLflow's database, beside the one the image creates for Optuna ($POSTGRES_DB). They cannot
# share one: both keep their schema version in a table named alembic_version.
#
# The official postgres image runs the scripts of /docker-entrypoint-initdb.d once, when its
# data volume is empty, with $POSTGRES_USER (the owner of both databases) and $MLFLOW_DB set
# by docker-compose.yml. tests/test_deployment.py runs this script against a local server.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --command "CREATE DATABASE \"$MLFLOW_DB\" OWNER \"$POSTGRES_USER\""
