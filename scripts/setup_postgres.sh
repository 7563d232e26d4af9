#!/bin/sh
# PostgreSQL from Debian's packages, for the distributed-search tests (tests/test_search_distributed.py
# starts a throwaway cluster with initdb/pg_ctl on 127.0.0.1 as the `postgres` system user, which
# the package creates; psycopg2-binary comes from the `search` extra). Idempotent: does nothing
# when pg_ctl and initdb are already installed. Needs root (or sudo) and a Debian/Ubuntu apt;
# elsewhere it says what to install and fails.
set -eu
found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -n "$found" ] && [ -x "$found/pg_ctl" ] && [ -x "$found/initdb" ] && id postgres >/dev/null 2>&1; then
    echo "setup_postgres: PostgreSQL already installed ($("$found/pg_ctl" --version))"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_postgres: no apt-get here; install PostgreSQL (initdb, pg_ctl) and a 'postgres' user yourself" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup_postgres: need root (or sudo) for apt-get install postgresql" >&2
        exit 1
    fi
fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends postgresql
found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
echo "setup_postgres: installed $("$found/pg_ctl" --version)"
