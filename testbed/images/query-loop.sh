#!/bin/sh
# The app of the bed's psql image (dbconn.local/psql:dev, /bin/query-loop): one query through
# $DATABASE_URL every ${QUERY_INTERVAL:-1} seconds, one log line each, naming the role, where
# psql connected (the sidecar) and the TLS of the server connection behind it:
#   query ran as shop_orders via 127.0.0.1 port 6432, server connection TLSv1.3
# Exits 0 on SIGTERM. The demo and tests/node.rs run it.
trap 'exit 0' TERM
while true; do
  psql "$DATABASE_URL" -Atq <<'SQL'
SELECT current_user AS who, coalesce((SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl), 'no TLS') AS tls \gset
\echo query ran as :who via :HOST port :PORT, server connection :tls
SQL
  sleep "${QUERY_INTERVAL:-1}" & wait
done
