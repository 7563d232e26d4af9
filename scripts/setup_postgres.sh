#!/bin/sh
# PostgreSQL from Debian's packages, for the distributed-search tests (tests/test_search_distributed.py
# starts a throwaway cluster with initdb/pg_ctl on 127.0.0.1 as the `postgres` system user, which
# the package creates; psycopg2-binary comes from the `search` extra). Idempotent: does nothing
# when pg_ctl and initdb are already installed. Needs root (or sudo) and a Debian/Ubuntu apt
# (scripts/apt_install.sh; EDGEUQ_APT_DRY_RUN=1 prints the commands only); elsewhere it says what
# to install and fails.
set -eu
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true; }
found=$(pg_bin)
if [ -n "$found" ] && [ -x "$found/pg_ctl" ] && [ -x "$found/initdb" ] && id postgres >/dev/null 2>&1; then
    echo "setup_postgres: PostgreSQL already installed ($("$found/pg_ctl" --version))"
    exit 0
fi
sh "$(dirname "$0")/apt_install.sh" --tag setup_postgres postgresql
[ -z "${EDGEUQ_APT_DRY_RUN:-}" ] || exit 0
found=$(pg_bin)
echo "setup_postgres: installed $("$found/pg_ctl" --version)"
