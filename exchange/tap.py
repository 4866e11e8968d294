# -*- test-case-name: exchange.test.test_embedded -*-
"""`twistd -n exchange`: every module of the exchange in one process, embedded."""

import os
import sys

from twisted.application import service
from twisted.python import usage

from exchange import embedded
from utils.daemon import exit_status_on_failure, gave_up


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Runs matchengine, readhistory, accesshttp, marketprice, accessws and "
                "alertcenter in one process on SQLite, an in-process bus and an in-memory "
                "store, all kept under --data, so a restart resumes where it stopped. "
                "For production run each module's own daemon against MySQL, Kafka and Redis.")
    optParameters = [["data", "d", "data", "folder of the exchange's state and log"]]
    optFlags = [["verbose", "v", "copy the log to stderr too"]]

    def __init__(self):
        super().__init__()
        self["ports"] = {}

    def opt_port(self, value):
        """NAME=PORT: move a listener (names: %s); repeatable"""
        name, sep, number = value.partition("=")
        if not sep or name not in embedded.PORTS or not number.isdigit():
            raise usage.UsageError("--port wants NAME=PORT with NAME one of %s, not %r"
                                   % (", ".join(embedded.PORTS), value))
        self["ports"][name] = int(number)

    opt_port.__doc__ = opt_port.__doc__ % ", ".join(embedded.PORTS)


class _Banner(service.Service):
    """Where to reach the exchange, on the terminal once its modules are ready (`ready()`, a
    Deferred), not before: matchengine listens only once it has replayed its operation log,
    and until then every call would fail.  Nothing is shown when a module gave up while
    starting: the process is stopping."""

    def __init__(self, ports, data, ready, reactor=None, out=None):
        self.ports, self.data, self.ready = ports, data, ready
        self.reactor = reactor
        self.out = out

    def startService(self):
        service.Service.startService(self)
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor
        self.ready().addCallback(lambda _: reactor.callWhenRunning(self._show))

    def _show(self):
        if gave_up() or not self.running:
            return
        http = "http://127.0.0.1:%d/" % self.ports["accesshttp"]
        print("\nviabtc exchange (embedded), state in %s\n"
              "  HTTP JSON-RPC  %s\n"
              "  websocket      ws://127.0.0.1:%d/\n"
              "  try:  curl -s %s -d '{\"id\": 1, \"method\": \"market.list\", "
              "\"params\": []}'\n"
              "  log            %s\n"
              "  Ctrl-C stops it.\n" % (self.data, http, self.ports["accessws"], http,
                                      os.path.join(self.data, "log", "exchange.log")),
              # the terminal, not twistd's log
              file=self.out or sys.__stdout__, flush=True)


def makeService(options):
    exit_status_on_failure()
    try:
        top = embedded.build(options["data"], options["ports"], stderr=options["verbose"])
    except embedded.DataUnusable as e:
        print("exchange: not started: %s" % e, file=sys.stderr)
        raise SystemExit(1) from None
    # a large state takes a while to load: where to follow it, before the banner
    print("viabtc exchange (embedded): loading its state from %s; progress in %s"
          % (options["data"], os.path.join(options["data"], "log", "exchange.log")),
          file=sys.__stdout__, flush=True)
    _Banner(top.ports, options["data"], top.modules.started).setServiceParent(top)
    return top
