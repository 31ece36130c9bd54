#!/bin/sh
# One-shot (docker-compose service `temporal-schema`, image temporalio/admin-tools): create Temporal's
# two PostgreSQL databases when they are missing and bring their schemas to this server version. Safe
# on every `docker compose up`: an existing database is kept and its schema only moves forward.
set -eu

HOST=${POSTGRES_SEEDS:-postgresql}
PORT=${DB_PORT:-5432}
USER=${POSTGRES_USER:-temporal}
export SQL_PASSWORD=${POSTGRES_PWD:-temporal}
SCHEMA=/etc/temporal/schema/postgresql/v12

until nc -z "$HOST" "$PORT"; do echo "waiting for PostgreSQL at $HOST:$PORT"; sleep 1; done

sql() { temporal-sql-tool --plugin postgres12 --ep "$HOST" -p "$PORT" -u "$USER" "$@"; }

for pair in temporal:temporal temporal_visibility:visibility; do
    db=${pair%%:*}
    dir=${pair##*:}
    if sql --db "$db" create; then
        sql --db "$db" setup-schema -v 0.0   # a new database: the versioning tables, at version 0
    else
        echo "database $db exists"
    fi
    sql --db "$db" update-schema -d "$SCHEMA/$dir/versioned"
done
echo "Temporal schemas are up to date"
