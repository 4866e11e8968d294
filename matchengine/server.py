# -*- test-case-name: matchengine.test.test_server -*-
"""The matchengine daemon: recovery, the RPC port, the CLI, the writers and the timers.

Requests run one at a time on the reactor thread.  A successful write is appended to the
operation log; its reply, its history rows and its messages wait until the log batch that
holds it is committed (durable mode), and every later reply waits behind it, so replies
leave in the order the requests came and nothing is acknowledged that a crash could undo.

Writes are refused with "service unavailable" while the operation log, the history writer or
the message queue hold more than their `queue_limits`, and every request while an
operation-log commit has waited `commit_stall` seconds.
"""

import gc
import importlib
import json
import sys
import time

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger, LogLevel

from network.address import buffer_sizes
from matchengine import config, persist
from matchengine import engine as engine_module
from matchengine.effects import TOPIC_BALANCES, TOPIC_DEALS, TOPIC_ORDERS
from matchengine.operlog import Abandoned, OperationLog, stamp
from utils import forked, rpc
from utils.daemon import give_up, mark_ready
from utils.jsonfmt import dumps
from utils.rpc_server import NO_REPLY, RPCServerFactory, listen_rpc

__all__ = ["MatchEngine"]

# balance entries from which asset.summary is computed in a forked child
FORK_SUMMARY_ENTRIES = 20000

# allocations of container objects between two collections of the youngest generation
# (CPython's default is 700): a write's history rows and messages live until its log batch
# commits, so at the default most of them were traversed, then promoted and traversed again
# before being freed (the profile of a loaded daemon had 5% of its time in the collector);
# a collection of this many objects takes one to two milliseconds
GC_YOUNG_THRESHOLD = 20000

# bytes the operation log's `detail` column (TEXT) holds.  A write's entry is its params
# written again as JSON, at most about 5.3 times its request's body (a number such as 1e-5
# comes back as 1.0000000000000001e-05, a character outside ASCII as a \uXXXX escape or
# two, a space follows each comma and colon) and a hundred bytes: only a body larger than
# LOG_CHECKED_FROM can make an entry too long, and only such a write has its entry measured
# before it is executed
LOG_DETAIL_MAX = 65535
LOG_CHECKED_FROM = LOG_DETAIL_MAX // 6

# seconds a stop waits for a slice being written (its child dies with the daemon): well
# within the 60 s the watchdog gives a stopping daemon, the writer's stop still to come
SLICE_STOP_PATIENCE = 30

# the modules of the matching path, compiled with Cython when installed (setup.py)
COMPILED_MODULES = ("matchengine.balance", "matchengine.book", "matchengine.effects",
                    "matchengine.engine", "matchengine.market", "matchengine.rowtext",
                    "utils.decimals", "utils.handoff", "utils.jsonfmt")


def uncompiled():
    """Those of `COMPILED_MODULES` that run from their Python source."""
    return [name for name in COMPILED_MODULES
            if importlib.import_module(name).__file__.endswith(".py")]


class MatchEngine(service.Service):
    """Owns the engine and everything around it; built by `matchengine.tap`."""

    log = Logger()

    def __init__(self, cfg, assets, markets, db_log, outbox, reactor=None,
                 clock_time=time.time, listen=True, db_log_commits=None):
        if reactor is None:
            from twisted.internet import reactor
        self.cfg = cfg
        self.reactor = reactor
        self.clock_time = clock_time
        self.engine = engine_module.Engine(assets, markets)
        self.tables = (assets, markets)
        self.db_log = db_log
        # where the operation log commits its batches (`operlog.autocommit_connection`);
        # None: in transactions on db_log
        self.db_log_commits = db_log_commits
        self.outbox = outbox
        self.listen_enabled = listen
        limits = cfg.get("queue_limits") or {}
        self.limit_operlog = limits.get("operlog", 100000)
        self.limit_history = limits.get("history", 1000000)
        self.limit_messages = limits.get("messages", 1000000)
        self.operlog = None
        self.ports = []
        self.is_ready = False
        self._ready_waiters = []
        self._summary_running = False
        self._summary_waiting = []      # (asset names, request) for the next child
        self.last_slice_time = 0
        self.newest_slice = 0           # the time of the newest slice saved or begun
        self._slicing = defer.DeferredLock()
        self._timers = []
        self._last_busy_log = 0.0
        self.debug = bool(cfg.get("debug", False))
        self.factory = RPCServerFactory(
            {command: self._handler(command) for command in self.engine.handlers},
            cfg["svr"]["max_pkg_size"], heartbeat_check=cfg["svr"].get("heartbeat_check", True),
            debug=self.debug, buf_limit=cfg["svr"].get("buf_limit", 0), name="matchengine",
            clock=reactor)

    # -- lifecycle ---------------------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        # the reactor thread gives up the GIL at every system call; with the writer threads
        # busy it would wait a whole switch interval (5 ms) to get it back each time
        sys.setswitchinterval(0.0005)
        d = defer.Deferred.fromCoroutine(self._start())
        d.addErrback(self._start_failed)
        return d

    async def _start(self):
        started = time.monotonic()
        # the loaded balances and orders live long and hold no cycles: the collector is off
        # while they are built, then they are frozen out of its reach.  A full collection
        # over 1M resting orders would otherwise hold the matching thread for about 0.6 s.
        fence = getattr(self.db_log_commits, "fence", None)
        if fence is not None:
            # the log's lock (operlog.Fence) first: what a killed predecessor still had under
            # way is then committed or gone before the log is read
            try:
                await self.db_log_commits.on_connection(fence)
            except Abandoned:
                return          # stopped while waiting (`_stop` says so)
        gc.disable()
        try:
            recovered = await persist.load_state(self.engine, self.db_log,
                                                 reactor=self.reactor)
        finally:
            gc.freeze()
            gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
            gc.enable()
        self.last_slice_time = recovered.slice_time or 0
        self.newest_slice = recovered.newest_slice
        self.operlog = OperationLog(self.db_log, self.reactor, recovered.last_id,
                                    window=self.cfg.get("commit_window", 0.0),
                                    durable=self.cfg.get("durable", True),
                                    clock_time=self.clock_time,
                                    after_release=self.outbox.send_now,
                                    autocommit_db=self.db_log_commits,
                                    newest_table=recovered.newest_table,
                                    stall=self.cfg.get("commit_stall", 0.5))
        self.outbox.start(recovered.last_id, self._rebuild_settings())
        if self.listen_enabled:
            self.ports = await listen_rpc(self.reactor, self.cfg["svr"]["bind"], self.factory,
                           **buffer_sizes(self.cfg["svr"]))
        self._every(1.0, self._slice_check)
        self._every(60.0, self._expire)
        self.log.info("matchengine ready in {seconds:.2f} s: order id {order}, deal id {deal}, "
                      "operation id {oper}", seconds=time.monotonic() - started,
                      order=self.engine.order_id, deal=self.engine.deal_id,
                      oper=recovered.last_id)
        slow = uncompiled()
        if slow:
            self.log.warn("matching modules not compiled, running about half as fast: {names} "
                          "(install with Cython and a C compiler)", names=" ".join(slow))
        self.is_ready = True
        mark_ready()
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(self)

    def _rebuild_settings(self):
        """What `matchengine.rebuild` needs, as JSON values."""
        return dict(config.tables_data(*self.tables), db_log=dict(self.cfg["db_log"]))

    def when_ready(self):
        """A Deferred firing with this service once recovery is done and the port open."""
        if self.is_ready:
            return defer.succeed(self)
        d = defer.Deferred()
        self._ready_waiters.append(d)
        return d

    def _start_failed(self, failure):
        give_up(self.reactor, self.log, "matchengine could not start", failure)
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(failure)

    def _every(self, seconds, function):
        from twisted.internet.task import LoopingCall
        loop = LoopingCall(self._guarded, function)
        loop.clock = self.reactor
        loop.start(seconds, now=False)
        self._timers.append(loop)

    def _guarded(self, function):
        try:
            function()
        except Exception:
            self.log.failure("matchengine: timer {name} failed", name=function.__name__)

    def stopService(self):
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self):
        """Stop intake, flush the operation log (which releases the replies of what it
        commits), close the connections once those replies are written, then flush history
        and messages."""
        fence = getattr(self.db_log_commits, "fence", None)
        if fence is not None and not self.is_ready:
            fence.abandon()     # nothing accepted yet: no wait for the log's lock
        for port in self.ports:
            await port.stopListening()
        connections = list(self.factory.connections)
        for conn in connections:
            conn.transport.pauseProducing()     # requests not read are not answered
        for loop in self._timers:
            if loop.running:
                loop.stop()
        if self.operlog is not None:
            await self.operlog.flush()
        for conn in connections:
            conn.transport.loseConnection()     # after the replies just released
        if self._slicing.locked:
            # the slice child dies with this process: let it finish, for a while
            self.log.info("matchengine: waiting for the slice under way")
            try:
                await self._slicing.acquire().addTimeout(SLICE_STOP_PATIENCE, self.reactor)
                self._slicing.release()
            except defer.TimeoutError:
                self.log.critical("matchengine: the slice under way is not written after "
                                  "{seconds} s; stopping without it",
                                  seconds=SLICE_STOP_PATIENCE)
        if fence is not None and fence.session is not None:
            try:
                await self.db_log_commits.on_connection(fence.release)
            except Exception as e:
                self.log.warn("operation log: releasing its lock failed ({error})", error=e)
        await self.outbox.stop()
        if self.operlog is None:
            self.log.info("matchengine stopped before it was ready")
        else:
            self.log.info("matchengine stopped: operation id {oper}", oper=self.operlog.last_id)

    # -- requests ----------------------------------------------------------------------

    def _handler(self, command):
        if command == engine_module.ASSET_SUMMARY:
            return self._asset_summary
        write = command in engine_module.WRITE_COMMANDS
        execute = self.engine.handlers[command]
        release = self._release
        engine = self.engine

        def handle(params, request):
            engine.use_context()
            if self.operlog.stalled:
                # a write would be applied, its reply held past the gateways' timeouts: its
                # outcome unknown to its client; a read would wait behind it
                self._send(request, None, rpc.SERVICE_UNAVAILABLE())
                return NO_REPLY
            if write:
                if self._busy():
                    # the refusal tells nothing of uncommitted state: it need not wait for
                    # the log
                    self._send(request, None, rpc.SERVICE_UNAVAILABLE())
                    return NO_REPLY
                if (len(request.packet.body) > LOG_CHECKED_FROM
                        and not self._fits_log(command, params)):
                    self._answer(request, None, rpc.INVALID_ARGUMENT())
                    return NO_REPLY
            # times are kept to the microsecond, as the operation log stores them, so that a
            # replay reproduces them exactly
            now = stamp(self.clock_time())
            try:
                result = execute(params, now, True)
            except rpc.RPCError as error:
                self._answer(request, None, error)
                return NO_REPLY
            if write:
                batch = self.operlog.append(now, self.engine.log_entry(command, params))
                history, messages = self.engine.effects.take()
                batch.then(release, request, result, history, messages, self.operlog.last_id)
            else:
                self._answer(request, result, None)
            return NO_REPLY
        return handle

    def _fits_log(self, command, params):
        """Whether the operation-log entry of a write of these params fits the log's
        column, with room for the id balance.update adds to its detail.  Stored, an entry
        too long would be cut short (INSERT IGNORE): acknowledged, then lost at the next
        start."""
        try:
            entry = self.engine.log_entry(command, params)
        except (LookupError, TypeError, ValueError):
            return True     # not a valid write: the engine refuses it
        return len(entry.encode("utf-8")) + 64 <= LOG_DETAIL_MAX

    def _asset_summary(self, params, request):
        """asset.summary visits every balance entry (about a quarter of a second per
        million): past FORK_SUMMARY_ENTRIES it is computed in a forked child, on the state
        of that instant, while matching goes on.  One child at a time: the requests that
        arrive meanwhile share the next one."""
        engine = self.engine
        try:
            names = engine.summary_assets(params)
        except rpc.RPCError as error:
            self._answer(request, None, error)
            return NO_REPLY
        if engine.balances.count() < FORK_SUMMARY_ENTRIES:
            self._answer(request, engine.summaries(names), None)
            return NO_REPLY
        self._summary_waiting.append((names, request))
        if not self._summary_running:
            self._next_summaries()
        return NO_REPLY

    def _next_summaries(self):
        batch, self._summary_waiting = self._summary_waiting, []
        self._summary_running = bool(batch)
        if not batch:
            return
        every = sorted({name for names, _ in batch for name in names})
        engine = self.engine

        def answer(text):
            by_name = {summary["name"]: summary for summary in json.loads(text)}
            for names, request in batch:
                self._answer(request, [by_name[name] for name in names], None)

        def failed(failure):
            self.log.failure("asset.summary failed", failure)
            for _, request in batch:
                self._send(request, None, rpc.INTERNAL_ERROR())

        d = forked.in_child(lambda: dumps(engine.summaries(every)), self.reactor)
        d.addCallbacks(answer, failed)
        d.addBoth(lambda _: self._next_summaries())

    def _answer(self, request, result, error):
        barrier = self.operlog.barrier if self.operlog is not None else None
        if barrier is not None:
            barrier.then(self._send, request, result, error)
        else:
            self._send(request, result, error)

    def _send(self, request, result, error):
        if error is None:
            request.reply_result(result, self.debug)
        else:
            request.reply_error(error, self.debug)

    def _release(self, request, result, history, messages, oper_id):
        # the batch's history and messages reach the writer process's pipe (after_release)
        # before the reply can leave, on the reactor's next pass: a crash after the reply
        # cannot take them back (and a crash before, after the commit, leaves them to be
        # rebuilt from the log: `matchengine.rebuild`)
        if history or messages:
            self.outbox.add(history, messages, oper_id)
        request.reply_result(result, self.debug)

    def _busy(self):
        reason = None
        if self.operlog.pending_rows >= self.limit_operlog:
            reason = "operation log"
        elif self.outbox.pending_history >= self.limit_history:
            reason = "history"
        elif self.outbox.pending_messages >= self.limit_messages:
            reason = "messages"
        if reason is None:
            return False
        now = time.monotonic()
        if now - self._last_busy_log >= 1.0:
            self._last_busy_log = now
            self.log.critical("matchengine: {what} queue is full; refusing writes",
                              what=reason)
        return True

    # -- timers ------------------------------------------------------------------------

    def _expire(self):
        self.engine.expire_dedup(self.clock_time())

    def _slice_check(self):
        now = int(self.clock_time())
        interval = self.cfg.get("slice_interval", 86400)
        if now - self.last_slice_time >= interval and now % interval <= 5:
            self.last_slice_time = now
            self.make_slice(now)

    def make_slice(self, ts=None, started=None):
        """Snapshot now (once the log holds every operation so far); fires with success,
        and `started` (a Deferred) once the state is taken and being written.

        One slice at a time: a slice asked for while one is being made is made after it,
        from the state of its own moment.  Each gets a time of its own, after every slice
        saved before (a second slice within the same second, or under a clock stepped back,
        would otherwise write over the tables of the one before)."""
        return self._slicing.run(lambda: defer.Deferred.fromCoroutine(self._slice(ts, started)))

    async def _slice(self, ts, started):
        ts = max(int(self.clock_time()) if ts is None else ts, self.newest_slice + 1)
        self.newest_slice = ts
        try:
            await self.operlog.flush()
            # nothing is pending at this instant: the child's image holds what is committed
            written = persist.make_slice(self.engine, self.db_log, ts, self.operlog.last_id,
                                         self.cfg.get("slice_keeptime", 259200), self.reactor)
        except Exception:
            self.log.failure("slice {ts} failed", ts=ts, level=LogLevel.critical)
            if started is not None:
                started.errback()
            return False
        if started is not None:
            started.callback(ts)
        try:
            ok = await written
        except Exception:
            # the embedded exchange's copy of the staged rows (a full disk, say)
            self.log.failure("slice {ts} failed", ts=ts, level=LogLevel.critical)
            return False
        if ok:
            self.log.info("slice {ts} written", ts=ts)
        else:
            self.log.critical("slice {ts} failed", ts=ts)
        return ok

    # -- status (CLI) ------------------------------------------------------------------

    def status_lines(self):
        e, pending = self.engine, self.outbox.pending_by_topic
        return ("order last ID: %d\ndeals last ID: %d\noperlog last ID: %d\n"
                "operlog pending: %d\nhistory pending %d\nmessage deals pending: %d\n"
                "message orders pending: %d\nmessage balances pending: %d\n" % (
                    e.order_id, e.deal_id, self.operlog.last_id, self.operlog.pending_rows,
                    self.outbox.pending_history, pending(TOPIC_DEALS), pending(TOPIC_ORDERS),
                    pending(TOPIC_BALANCES)))
