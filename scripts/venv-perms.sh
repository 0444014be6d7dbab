#!/usr/bin/env bash
# Let every OS user (PostgreSQL's `postgres` runs archive_command and restore_command)
# run the venv at $1, and widen nothing else:
#   - the venv itself: readable and, for folders and programs, executable by all (-R);
#   - each folder on the path down to it: a+x only (enter, not list), never recursive,
#     and only where others cannot enter yet. A venv under $HOME makes $HOME traversable,
#     and nothing in it readable that was not (~/.ssh stays 0700, its keys 0600).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 VENV" >&2; exit 2; }
venv=$(realpath -m -- "$1")
[ -d "$venv" ] || { echo "$0: $venv is not a folder" >&2; exit 1; }
dir=$(dirname -- "$venv")
while [ "$dir" != "/" ]; do
    mode=$(stat -c %a -- "$dir")
    if (( (8#$mode & 8#001) == 0 )); then
        chmod a+x -- "$dir"
    fi
    dir=$(dirname -- "$dir")
done
chmod -R a+rX -- "$venv"
