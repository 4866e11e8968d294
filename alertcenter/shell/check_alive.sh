#!/bin/sh
# Exit 0 when the daemon runs and its first TCP port answers; otherwise say why, exit 1.
# Suitable for cron:  * * * * * /path/alertcenter/shell/check_alive.sh || /path/alertcenter/shell/restart.sh
MODULE=alertcenter
cd "$(dirname "$0")/.." || exit 1
PIDFILE="log/$MODULE.pid"
CONFIG="${1:-conf/config.json}"
if [ ! -f "$PIDFILE" ]; then
    echo "$MODULE: down (no pid file $PIDFILE)"
    exit 1
fi
PID=$(cat "$PIDFILE")
if ! kill -0 "$PID" 2>/dev/null; then
    echo "$MODULE: down (pid $PID is not running)"
    exit 1
fi
ADDR=$(python3 -c "
import json, sys
bind = json.load(open(sys.argv[1]))['svr']['bind']
bind = [bind] if isinstance(bind, str) else bind
print(next((b[4:] for b in bind if b.lower().startswith('tcp@')), ''))
" "$CONFIG" 2>/dev/null)
if [ -n "$ADDR" ]; then
    HOST=${ADDR%:*}; PORT=${ADDR##*:}
    if ! python3 -c "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)" "$HOST" "$PORT" 2>/dev/null; then
        echo "$MODULE: pid $PID runs but port $ADDR does not answer"
        exit 1
    fi
fi
echo "$MODULE: up (pid $PID${ADDR:+, port $ADDR})"
exit 0
