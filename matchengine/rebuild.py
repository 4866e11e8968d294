# -*- test-case-name: matchengine.test.test_rebuild -*-
"""The history rows and messages of logged operations that no writer got, made again.

A write is acknowledged once its operation-log batch is committed; its history rows and
messages go down the writer process's pipe right after.  A daemon killed in between leaves
operations in the log whose effects nobody holds (and a writer killed with it, or a machine
that stopped, loses those still in its queues).  The writer of the next run compares its
positions (`matchengine.writer.Positions`) with the last operation the daemon recovered and,
when they stop short of it, runs this module, with its settings as JSON on stdin:
`db_log`, `assets` and `markets` as the daemon has them, `after` and `upto` (the operations
to rebuild), `marks` (the positions).

It loads the newest slice taken at or before `after`, replays the log up to `upto`, the
operations after `after` with their effects built as the write made them, keeps of those the
rows and messages the positions say are not written, and writes them on stdout, framed as the
daemon frames its batches, `(0, oper_id, history, messages)`, `oper_id` the last operation of
the batch, each batch ending with a whole operation; the last batch ends at `upto`.  While it
loads and replays what comes before its first batch it writes `(PROGRESS,)` frames, a few a
second at most, so that the writer knows it is not stuck.
"""

import json
import sys
import time

from twisted.internet import defer, task

from matchengine import config, persist
from matchengine.engine import Engine
from matchengine.writer import PROGRESS, Positions, say
from utils import handoff, mysql

__all__ = ["Output"]

BATCH_OPERATIONS = 1000     # operations a batch, at most
PROGRESS_EVERY = 0.25       # seconds between progress frames, at least


class Output:
    """Gathers each operation's unwritten effects into batches for `write(frame)`."""

    def __init__(self, write, positions):
        self.write = write
        self.positions = positions
        self.history, self.messages = [], []
        self.oper_id = None
        self.operations = 0
        self.reported = time.monotonic()

    def emit(self, oper_id, history, messages):
        self.history.extend(self.positions.rows(oper_id, history))
        self.messages.extend(self.positions.messages_of(oper_id, messages))
        self.oper_id = oper_id
        self.operations += 1
        if self.operations >= BATCH_OPERATIONS:
            self.flush()

    def advanced(self):
        """A page of the slice or the log is loaded: say so, now and then."""
        now = time.monotonic()
        if now - self.reported >= PROGRESS_EVERY:
            self.reported = now
            self.write(handoff.dumps_framed((PROGRESS,)))

    def flush(self, upto=None):
        """Write what is gathered; with `upto`, a batch ending there even if empty."""
        if upto is not None:
            self.oper_id = max(self.oper_id or 0, upto)
        if self.oper_id is None or (not self.operations and upto is None):
            return
        self.write(handoff.dumps_framed((0, self.oper_id, self.history, self.messages)))
        self.history, self.messages, self.operations = [], [], 0


async def rebuild(reactor, settings, write):
    assets, markets = config.tables_from_data(settings)
    engine = Engine(assets, markets)
    db = mysql.from_config(settings["db_log"], max_connections=1)
    output = Output(write, Positions(settings["marks"]))
    try:
        recovered = await persist.load_state(
            engine, db, lambda message: say("rebuild: " + message, info=True), reactor,
            persist.Rebuild(settings["after"], settings["upto"], output.emit,
                            lambda message: say("rebuild: " + message), output.advanced))
    finally:
        db.close()
    if recovered.last_id < settings["upto"]:
        raise persist.RecoveryError("the operation log ends at %d, before operation %d"
                                    % (recovered.last_id, settings["upto"]))
    output.flush(settings["upto"])


def main():
    settings = json.loads(sys.stdin.buffer.read())
    stdout = sys.stdout.buffer

    def write(frame):
        stdout.write(frame)
        stdout.flush()

    def run(reactor):
        return defer.Deferred.fromCoroutine(rebuild(reactor, settings, write))
    task.react(run)


if __name__ == "__main__":
    main()
