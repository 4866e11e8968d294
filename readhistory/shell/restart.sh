#!/bin/sh
# Stop the readhistory daemon (SIGTERM; it flushes what it holds and exits), wait, start it again.
cd "$(dirname "$0")/.." || exit 1
if [ -z "$PYTHON" ]; then
    if [ -x ../.venv/bin/python ]; then PYTHON="$(pwd)/../.venv/bin/python"; else PYTHON=python3; fi
fi
exec "$PYTHON" -m utils.watchdog restart . readhistory "$@"
