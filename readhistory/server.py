# -*- test-case-name: readhistory.test.test_server -*-
"""The readhistory daemon: history queries over binary RPC, run on the database pool.

Several queries run at once (`worker_num` connections); replies go out as queries finish,
so clients match them by sequence, as with the original.  When 10 × `worker_num` queries
wait for a connection (beside the `worker_num` running), new ones are refused with "service
unavailable".  A failed query answers "internal error" and is logged at critical level.

Stopping does not wait for the queries: those running are interrupted (one blocked in the
server, on a locked table, would otherwise hold the process until it ended), and those
waiting are dropped, as the original drops them when it exits.
"""

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from network.address import buffer_sizes
from readhistory.reader import QUERIES
from utils import rpc
from utils.daemon import give_up, mark_ready
from utils.mysql import connection_lost
from utils.outage import Outage, on_log
from utils.rpc_server import RPCServerFactory, listen_rpc

__all__ = ["ReadHistory"]


class ReadHistory(service.Service):
    log = Logger()

    def __init__(self, cfg, db, reactor=None, listen=True):
        if reactor is None:
            from twisted.internet import reactor
        self.cfg = cfg
        self.db = db
        self.reactor = reactor
        self.listen_enabled = listen
        self.workers = cfg.get("worker_num", 10)
        self.in_flight = 0
        self.ports = []
        # MySQL away fails every query: told in few lines (`utils.outage`), not an alert a
        # query; a query that fails otherwise (a table missing) is an alert of its own
        self.outage = Outage("readhistory", on_log(self.log), clock=reactor.seconds)
        svr = cfg["svr"]
        self.factory = RPCServerFactory(
            {command: self._handler(query) for command, query in QUERIES.items()},
            svr["max_pkg_size"], heartbeat_check=svr.get("heartbeat_check", True),
            debug=bool(cfg.get("debug", False)), buf_limit=svr.get("buf_limit", 0),
            name="readhistory", clock=reactor)

    def startService(self):
        service.Service.startService(self)
        if self.listen_enabled:
            d = listen_rpc(self.reactor, self.cfg["svr"]["bind"], self.factory,
                           **buffer_sizes(self.cfg["svr"]))
            d.addCallback(self._listening)
            d.addErrback(self._failed)
            return d

    def _listening(self, ports):
        self.ports = ports
        self.log.info("readhistory ready on {bind}", bind=", ".join(self.cfg["svr"]["bind"]))
        mark_ready()

    def _failed(self, failure):
        give_up(self.reactor, self.log, "readhistory could not listen", failure)

    def stopService(self):
        service.Service.stopService(self)
        self.db.abort()
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])

    def _handler(self, query):
        def handle(params, request):
            # `workers` queries run, one on each connection; the rest wait their turn
            if self.in_flight - self.workers >= 10 * self.workers:
                self.log.error("readhistory: {waiting} queries waiting; service unavailable",
                               waiting=self.in_flight - self.workers)
                raise rpc.SERVICE_UNAVAILABLE()
            sql, args, result = query(params)
            self.in_flight += 1
            d = self.db.query(sql, args)
            d.addBoth(self._done)
            d.addCallbacks(result, self._query_failed, errbackArgs=(sql, args))
            return d
        return handle

    def _done(self, outcome):
        self.in_flight -= 1
        if not isinstance(outcome, Failure):
            self.outage.succeeded()
        return outcome

    def _query_failed(self, failure, sql, args):
        if self.db.aborted:
            # the stop's own abort of the pool, not the query's failure
            self.log.info("readhistory: stopping, query abandoned: {sql} {args}", sql=sql,
                          args=list(args))
            raise rpc.INTERNAL_ERROR()
        if connection_lost(failure.value):
            self.outage.failed("MySQL unavailable (%s); queries fail with internal error"
                               % failure.getErrorMessage())
        else:
            self.log.critical("readhistory: query failed ({error}): {sql} {args}",
                              error=failure.getErrorMessage(), sql=sql, args=list(args))
        raise rpc.INTERNAL_ERROR()
