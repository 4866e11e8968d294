# -*- test-case-name: exchange.test.test_pidfile -*-
"""The pid file of the embedded exchange, checked before twistd starts it (`make run`).

twistd refuses to start while the process its pid file names is alive.  After a kill -9 the
file stays, and by the next start its pid may belong to another program: twistd would take
that one for a running exchange and refuse, for ever.  So, first:

    python -m exchange.pidfile DATA/exchange.pid

which removes the file unless it names a running `twistd ... exchange`; a second exchange on
the same folder is still refused by twistd.  The file must be the exchange's own (the
Makefile's `$(DATA)/exchange.pid`), not one shared with other twistd applications.
"""

import sys

__all__ = ["drop_stale", "main"]


def drop_stale(path, out=None):
    """Remove the pid file `path` when the process it names is not an embedded exchange:
    none, another program, or this very process (a pid used again).  Returns whether it
    was removed; a note goes to `out` (default stderr).  A file without a pid in it is left
    for twistd to report."""
    from utils.watchdog import drop_stale_pidfile
    out = out or sys.stderr
    return drop_stale_pidfile(path, "exchange", "worker",
                              out=lambda text: print(text, file=out))


def main(argv=None, out=None):
    """`python -m exchange.pidfile PATH`: drop PATH if stale; exit status 0 either way."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m exchange.pidfile PATH", file=out or sys.stderr)
        return 2
    drop_stale(argv[0], out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
