#!/bin/sh
# Stop the daemon (SIGTERM, then wait for it to flush and exit), then start it again.
MODULE=alertcenter
cd "$(dirname "$0")/.." || exit 1
PIDFILE="log/$MODULE.pid"
if [ -f "$PIDFILE" ]; then
    PID=$(cat "$PIDFILE")
    if kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID"
        i=0
        while kill -0 "$PID" 2>/dev/null; do
            i=$((i + 1))
            if [ $i -gt 600 ]; then
                echo "$MODULE: pid $PID did not stop within 60 s" >&2
                exit 1
            fi
            sleep 0.1
        done
    fi
fi
sleep 1
exec bin/$MODULE "$@"
