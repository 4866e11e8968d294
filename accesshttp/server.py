# -*- test-case-name: accesshttp.test.test_server -*-
"""The HTTP JSON-RPC gateway: each method forwarded to its backend over binary RPC.

A request `{"id", "method", "params"}` is validated by `utils.http`; its params go to the
backend that serves the method (the table `METHODS`), re-serialised compactly, with the
client's id as the RPC `req_id`; the backend's reply body is the HTTP answer, unchanged.
Many HTTP clients share one RPC connection per backend; a slow backend delays only its own
methods.

| backend not connected            | 500, empty body                          |
| no reply within `timeout` s      | 504, error 5 "service timeout"           |
| backend connection lost meanwhile| 504, error 5 "service timeout"           |

`rpc.discover` answers the OpenRPC description of the API (`accesshttp.openrpc`).

Stopping ends intake first: the ports close and no connection is read from again.  The
backend calls under way then end as they would have (a reply, or 504 when their timer
fires: within `timeout`), and only then are the backend connections closed: closing them
first would answer 504 to calls the backend applies, which a client may well send again.
Each client connection closes once its answers are written; one that does not take them
within `timeout` more seconds is dropped.
"""

import json

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from accesshttp import openrpc
from network.address import buffer_sizes, listen, listen_monitor
from network.timer import within
from network.underway import UnderWay
from utils import http
from utils.daemon import give_up, mark_ready
from utils.jsonfmt import dumps
from utils.outage import ALERT_AFTER, Outage, on_log
from utils.rpc_client import (ConnectionLost, NotConnected, RequestTooLarge, RPCClient,
                              RPCTimeout)

__all__ = ["AccessHTTP", "METHODS"]

MATCHENGINE, MARKETPRICE, READHISTORY = "matchengine", "marketprice", "readhistory"

METHODS = {
    "asset.list": (MATCHENGINE, 104),
    "asset.summary": (MATCHENGINE, 105),
    "balance.query": (MATCHENGINE, 101),
    "balance.update": (MATCHENGINE, 102),
    "balance.history": (READHISTORY, 103),
    "order.put_limit": (MATCHENGINE, 201),
    "order.put_market": (MATCHENGINE, 202),
    "order.cancel": (MATCHENGINE, 204),
    "order.book": (MATCHENGINE, 205),
    "order.depth": (MATCHENGINE, 206),
    "order.pending": (MATCHENGINE, 203),
    "order.pending_detail": (MATCHENGINE, 207),
    "order.deals": (READHISTORY, 209),
    "order.finished": (READHISTORY, 208),
    "order.finished_detail": (READHISTORY, 210),
    "market.last": (MARKETPRICE, 304),
    "market.deals": (MARKETPRICE, 303),
    "market.kline": (MARKETPRICE, 302),
    "market.status": (MARKETPRICE, 301),
    "market.status_today": (MARKETPRICE, 305),
    "market.user_deals": (READHISTORY, 306),
    "market.list": (MATCHENGINE, 307),
    "market.summary": (MATCHENGINE, 308),
}


class AccessHTTP(service.Service):
    log = Logger()

    def __init__(self, cfg, reactor=None, listen_enabled=True, alerts=True):
        """`alerts`: whether a backend's outage raises an alert here (false in a worker
        other than worker 0: the gateway raises one, not one a worker)."""
        if reactor is None:
            from twisted.internet import reactor
        self.cfg = cfg
        self.reactor = reactor
        self.timeout = cfg["timeout"]
        self.listen_enabled = listen_enabled
        self.backends = {}
        # a backend down or slow fails every call: told as an outage (`utils.outage`), not
        # a line for each request; its client's connection and the calls it does not
        # answer share it, so that it is one alert however it fails
        self.outages = {}
        for name in (MATCHENGINE, MARKETPRICE, READHISTORY):
            self.outages[name] = Outage("accesshttp: " + name, on_log(self.log),
                                        alert_after=ALERT_AFTER if alerts else None,
                                        clock=reactor.seconds)
            self.backends[name] = RPCClient.for_backend(reactor, cfg[name],
                                                        outage=self.outages[name])
        handlers = {method: self._forwarder(method, backend, command)
                    for method, (backend, command) in METHODS.items()}
        self.discover_body = None
        handlers["rpc.discover"] = self._discover
        svr = cfg["svr"]
        # buf_limit counts max_pkg_size buffers of answers a client leaves unread
        self.factory = http.HTTPServerFactory(handlers, max_body=svr["max_pkg_size"],
                                              keep_alive=float(svr["keep_alive"]),
                                              max_output=svr["buf_limit"] * svr["max_pkg_size"],
                                              reactor=reactor)
        self.ports = []
        self.calls = UnderWay()     # backend calls

    # -- lifecycle ---------------------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        for client in self.backends.values():
            client.start()
        if self.listen_enabled:
            return defer.Deferred.fromCoroutine(self._listen())

    async def _listen(self):
        try:
            for address in self.cfg["svr"]["bind"]:
                self.ports.append(await listen(self.reactor, address, self.factory,
                                               **buffer_sizes(self.cfg["svr"])))
            self.ports += await listen_monitor(self.reactor, self.cfg["monitor"])
        except Exception:
            give_up(self.reactor, self.log, "accesshttp could not listen")
            return
        self.log.info("accesshttp ready on {bind}", bind=", ".join(self.cfg["svr"]["bind"]))
        mark_ready()

    def stopService(self):
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self):
        """Stop intake, let the backend calls under way end, then close the backend
        connections, and the clients' once their answers are written."""
        ports, self.ports = self.ports, []
        await defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
        closed = self.factory.finish()
        if self.calls.count:
            self.log.info("accesshttp stopping: {calls} backend calls under way",
                          calls=self.calls.count)
            await within(self.reactor, self.calls.ended(), self.timeout)
        for client in self.backends.values():
            client.stop()
        if not await within(self.reactor, closed, self.timeout):
            self.log.warn("accesshttp stopping: {count} clients did not take their answers; "
                          "dropped", count=len(self.factory.connections))
            self.factory.abort()

    # -- forwarding --------------------------------------------------------------------

    def _forwarder(self, method, backend, command):
        client = self.backends[backend]
        outage = self.outages[backend]
        timeout = self.timeout

        def answered(body):
            outage.succeeded(method)
            return 200, body

        def forward(request):
            body = dumps(request.params).encode()
            try:
                d = client.call_raw(command, body, timeout, request.id)
            except Exception:
                self.log.failure("accesshttp: {method} could not be sent", method=method)
                return 500, b""
            self.calls.track(d)
            d.addCallbacks(answered, self._backend_failed,
                           errbackArgs=(request, backend, method))
            return d
        return forward

    def _backend_failed(self, failure, request, backend, method):
        if failure.check(NotConnected):
            # its client tells the backend's outage
            self.log.debug("accesshttp: {backend} not connected ({method})",
                           backend=backend, method=method)
            return 500, b""
        if failure.check(RequestTooLarge):
            self.log.info("accesshttp: {error}", error=failure.getErrorMessage())
            return 200, http.error_body(1, "invalid argument", request.id)
        if failure.check(RPCTimeout, ConnectionLost):
            self.outages[backend].failed("did not answer %s %s" % (
                method, "in time" if failure.check(RPCTimeout) else
                "(the connection was lost)"), method)
            return 504, http.error_body(5, "service timeout", request.id)
        self.log.failure("accesshttp: {method} failed", failure, method=method)
        return 500, b""

    def _discover(self, request):
        if self.discover_body is None:
            self.discover_body = json.dumps(openrpc.document(), ensure_ascii=False)
        return 200, b'{"error": null, "result": %s, "id": %d}' % (
            self.discover_body.encode(), request.id)


