#!/bin/sh
# docker-entrypoint-initdb.d hook for the compose stack's application database:
# the same schema and sample data as the sandbox, at 20000 users.
set -eu
psql -v ON_ERROR_STOP=1 -v scale=20000 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f /sql/booking_schema.sql
