#!/usr/bin/env bash
# Install the Debian packages chainlens-ops and its test suite need, if missing:
# PostgreSQL 15 (server and client binaries, and the `postgres` OS user the test
# clusters run as), python3-venv (the venv the `postgres` user can run), make,
# prometheus (its promtool tests the alert rules).
# With --bench, also the anchors the benchmarks compare against.
set -euo pipefail

need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15 postgresql-client-15)
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v make >/dev/null || need+=(make)
command -v runuser >/dev/null || need+=(util-linux)
# promtool checks and tests the alert rules in scripts/ (the suite runs it).
command -v promtool >/dev/null || need+=(prometheus)
if [ "${1:-}" = "--bench" ]; then
    command -v pgbackrest >/dev/null || need+=(pgbackrest)
    command -v barman-cloud-wal-archive >/dev/null || need+=(barman-cli-cloud)
    [ -e /usr/share/postgresql/15/extension/pg_partman.control ] || need+=(postgresql-15-partman)
    command -v hyperfine >/dev/null || need+=(hyperfine)
fi

if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${need[*]} (run this script as root)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
id postgres >/dev/null 2>&1 || { echo "no postgres OS user after install" >&2; exit 1; }
