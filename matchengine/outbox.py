# -*- test-case-name: matchengine.test.test_outbox -*-
"""Where committed operations' history rows and messages go.

`WriterOutbox` hands them to a writer process (`matchengine.writer`) over a pipe and counts
them until the process confirms each batch: at once on `send_now` (the daemon calls it after
each commit of the operation log, before the replies leave), else every `interval` seconds.
If the process dies, it is started again and every unconfirmed batch is sent again, in order.

`LocalOutbox` does the same job in this process (a `HistoryWriter` and a producer service);
the embedded mode and the tests of small setups use it.

Both offer `start(recovered, rebuild)`, `add(history, messages, oper_id)`,
`pending_history`, `pending_messages`, `pending_by_topic(topic)` and `flush()`.
"""

import collections
import contextlib
import fcntl
import os
import sys

from twisted.internet import defer, error, protocol
from twisted.logger import Logger

from matchengine.writer import PREFIXES
from network.output import write_now
from network.timer import within
from utils import handoff

__all__ = ["WriterOutbox", "LocalOutbox"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPE_SIZE = 1 << 20
# seconds a stopping daemon waits for its writer to confirm a batch before it stops it
STOP_PATIENCE = 10.0


class _WriterProtocol(protocol.ProcessProtocol):
    def __init__(self, outbox):
        self.outbox = outbox
        self.buffer = b""
        self.errors = b""

    def connectionMade(self):
        # a larger pipe keeps batches in the kernel, out of this process, while the writer
        # is briefly behind (Linux; elsewhere the default size stays)
        with contextlib.suppress(AttributeError, OSError):
            fcntl.fcntl(self.transport.pipes[0].fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.outbox._started(self)

    def outReceived(self, data):
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line:
                self.outbox._acked(int(line))

    def errReceived(self, data):
        self.errors += data
        *lines, self.errors = self.errors.split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace")
            if not text:
                continue
            for level, prefix in PREFIXES.items():
                if text.startswith(prefix):
                    self.outbox.log.emit(level, "writer: {line}", line=text[len(prefix):])
                    break
            else:
                self.outbox.log.critical("writer: {line}", line=text)

    def processEnded(self, reason):
        self.outbox._ended(self, reason)


class WriterOutbox:
    log = Logger()

    def __init__(self, reactor, db_history, brokers, workers=4, interval=0.05,
                 restart_delay=1.0, lock=None):
        self.reactor = reactor
        # `lock`: a file the writer holds while it runs; a new writer waits for the one
        # its killed daemon left behind (see matchengine.writer.take_turn)
        # `run`: this daemon run, for its writers (matchengine.writer); `parent` (set at
        # each start): this process, which a writer finds gone, once its turn comes, if the
        # daemon has ended
        self.settings = {"db_history": dict(db_history), "brokers": brokers,
                         "workers": workers, "lock": lock,
                         "run": int.from_bytes(os.urandom(7), "big")}
        self.interval = interval
        self.restart_delay = restart_delay
        self.history, self.messages = [], []
        self.oper_id = 0        # the last operation whose effects were added
        self.sequence = 0
        # sequence -> (frame, rows, messages): the batch's frame, its count of history rows
        # and its (topic, text) messages, kept for the per-topic counts of the CLI
        self.unacked = collections.OrderedDict()
        self.pending_history = 0
        self.pending_messages = 0
        self.process = None
        self.stopping = False
        self.confirmed = 0      # batches confirmed so far
        self._call = None
        self._idle = []

    # -- process -----------------------------------------------------------------------

    def start(self, recovered=None, rebuild=None):
        """Start the writer process.  `recovered`: the last operation recovery replayed;
        `rebuild`: what `matchengine.rebuild` needs to rebuild the effects of operations
        before it that the writer has not got (the operation log's database, the assets
        and markets); both kept for the writer's restarts."""
        if self.stopping:
            return      # a restart due after a writer that was stopped with the daemon
        if recovered is not None:
            self.oper_id = recovered
            self.settings.update(recovered=recovered, rebuild=rebuild)
        # the process that spawns it, which twistd's daemonizing forks made after this
        # object was built
        self.settings["parent"] = os.getpid()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        self.reactor.spawnProcess(_WriterProtocol(self), sys.executable,
                                  [sys.executable, "-m", "matchengine.writer"], env=env)

    def _started(self, proto):
        self.process = proto
        # its settings first; then every batch not confirmed, in order
        if "recovered" in self.settings:
            # no writer can have written past the last operation handed over so far
            self.settings["handed"] = self.oper_id
        write_now(proto.transport.pipes[0], handoff.dumps_framed(self.settings))
        for frame, _, _ in self.unacked.values():
            write_now(proto.transport.pipes[0], frame)

    def _ended(self, proto, reason):
        self.process = None
        if self.stopping:
            return
        self.log.critical("writer process ended ({reason}); {count} batches to send again",
                          reason=reason.getErrorMessage(), count=len(self.unacked))
        self.reactor.callLater(self.restart_delay, self.start)

    def _acked(self, sequence):
        """Every batch up to `sequence` is written and sent."""
        while self.unacked:
            first = next(iter(self.unacked))
            if first > sequence:
                break
            self.confirmed += 1
            _, rows, messages = self.unacked.pop(first)
            self.pending_history -= rows
            self.pending_messages -= len(messages)
        self._check_idle()

    # -- batches -----------------------------------------------------------------------

    def add(self, history, messages, oper_id):
        self.oper_id = oper_id
        self.history.extend(history)
        self.messages.extend(messages)
        self.pending_history += len(history)
        self.pending_messages += len(messages)
        # a fallback for what no commit hands over: while commits call send_now the timer
        # stays armed, once per interval, instead of being made and cancelled for each
        if self._call is None:
            self._call = self.reactor.callLater(self.interval, self._interval_ended)

    def _interval_ended(self):
        self._call = None
        self.send_now()

    def send_now(self):
        """Hand everything added so far to the writer process, during this call when its
        pipe has room."""
        if not self.history and not self.messages:
            return
        self.sequence += 1
        # marshal's format: the batch is plain tuples, strings and numbers, and both ends
        # run the same interpreter (written by a C writer made for such batches, see
        # utils.handoff)
        frame = handoff.dumps_framed((self.sequence, self.oper_id, self.history,
                                      self.messages))
        self.unacked[self.sequence] = (frame, len(self.history), self.messages)
        self.history, self.messages = [], []
        if self.process is not None:
            write_now(self.process.transport.pipes[0], frame)

    def pending_by_topic(self, topic):
        """Messages to `topic` not yet confirmed sent (counted when asked: the CLI's)."""
        batches = [messages for _, _, messages in self.unacked.values()]
        batches.append(self.messages)
        return sum(1 for messages in batches for name, _ in messages if name == topic)

    def _check_idle(self):
        if not self.unacked and not self.history and not self.messages:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def flush(self):
        """Fires once everything added so far is written."""
        self.send_now()
        if not self.unacked:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        return d

    async def _flushed_or_stalled(self, patience):
        """Whether everything is written, waiting while the writer confirms batches: False
        once it has confirmed none for `patience` seconds."""
        flushed = self.flush()
        while not flushed.called:
            confirmed = self.confirmed
            if not await within(self.reactor, flushed, patience) and \
                    self.confirmed == confirmed:
                return False
        return True

    async def stop(self, patience=None):
        """Stop once everything is written and the writer has ended.  A writer that
        confirms nothing for `patience` seconds (`STOP_PATIENCE` by default; Kafka or the
        history database away) is stopped with its batches: the next start rebuilds them
        from the operation log, as after a crash."""
        if patience is None:
            patience = STOP_PATIENCE
        written = await self._flushed_or_stalled(patience)
        self.stopping = True
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self.process is not None:
            ended = defer.Deferred()
            proto = self.process
            original = proto.processEnded

            def on_end(reason):
                original(reason)
                ended.callback(None)
            proto.processEnded = on_end
            proto.transport.closeStdin()
            if not written:
                self.log.critical(
                    "stopping: the writer confirmed nothing for {patience} s; stopped with "
                    "{count} batches ({rows} history rows, {messages} messages) not written, "
                    "which the next start rebuilds from the operation log",
                    patience=patience, count=len(self.unacked), rows=self.pending_history,
                    messages=self.pending_messages)
                with contextlib.suppress(OSError, error.ProcessExitedAlready):
                    proto.transport.signalProcess("KILL")
            elif not await within(self.reactor, ended, patience):
                # everything confirmed, but its ending records a position (the messages
                # lane's) in a history database that is away
                self.log.critical(
                    "stopping: the writer has not ended {patience} s after its last batch was "
                    "written (recording its position with the history database away, or "
                    "still rebuilding?); stopped: the next start writes again what it had "
                    "not recorded", patience=patience)
                with contextlib.suppress(OSError, error.ProcessExitedAlready):
                    proto.transport.signalProcess("KILL")
            await ended


class LocalOutbox:
    """History and messages written from this process."""

    def __init__(self, history_writer, producer):
        self.writer = history_writer
        self.producer = producer

    def start(self, recovered=None, rebuild=None):
        """What a crash kept from this process's queues is not rebuilt: the embedded
        exchange runs all in one process."""
        if self.producer is not None and not self.producer.running:
            self.producer.startService()

    @property
    def pending_history(self):
        return self.writer.queued_rows + self.writer.pending * 1000

    @property
    def pending_messages(self):
        return 0 if self.producer is None else self.producer.queue_length

    def pending_by_topic(self, topic):
        return 0 if self.producer is None else self.producer.topic_queue_length(topic)

    def send_now(self):
        """Nothing to hand over: this process writes the history and sends the messages."""

    def add(self, history, messages, oper_id):
        if history:
            self.writer.add(history)
        if messages and self.producer is not None:
            for topic, text in messages:
                self.producer.send(topic, text)

    def flush(self):
        return self.writer.flush()

    async def stop(self):
        await self.writer.flush()
        if self.producer is not None and self.producer.running:
            await defer.maybeDeferred(self.producer.stopService)
