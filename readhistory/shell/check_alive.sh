#!/bin/sh
# Exit 0 when the readhistory daemon, its watchdog and its TCP ports are up; otherwise say why, exit 1.
# For cron:  * * * * * /path/readhistory/shell/check_alive.sh || /path/readhistory/shell/restart.sh
cd "$(dirname "$0")/.." || exit 1
if [ -z "$PYTHON" ]; then
    if [ -x ../.venv/bin/python ]; then PYTHON="$(pwd)/../.venv/bin/python"; else PYTHON=python3; fi
fi
exec "$PYTHON" -m utils.watchdog check . readhistory "$@"
