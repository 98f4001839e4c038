#!/usr/bin/env bash
# Schema registry tests (tests/registry/): moto's S3 server, aiobotocore, asyncpg and httpx in the venv,
# and the `test` database on the local PostgreSQL (127.0.0.1:5432, user postgres) when that server runs.
# Idempotent; quick when everything is present.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"

FIND='import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))'
if ! "$PY" -c "$FIND" moto flask werkzeug aiobotocore asyncpg httpx >/dev/null 2>&1; then
  "$PY" -m pip install -q 'moto[server]>=5' 'aiobotocore>=2.13' 'asyncpg>=0.29' 'httpx>=0.27'
fi

# The PostgreSQL tests use database `test`; create it if the server is up and the database is missing.
if command -v psql >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  if ! psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE DATABASE test' >/dev/null 2>&1 || true
  fi
fi
