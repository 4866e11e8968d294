# -*- test-case-name: accesshttp.test.test_server -*-
"""`twistd accesshttp`: options and the service tree of the HTTP gateway.

One process serves every connection: on this machine one reactor answers far more requests
per second than the backends accept, so `worker_num` is read for compatibility and only
logged.
"""

import os

from twisted.application import service
from twisted.internet import reactor as global_reactor
from twisted.python import usage

from accesshttp import config
from utils.config import ConfigError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf",
                              "config.json")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("The HTTP JSON-RPC gateway: POST {\"id\", \"method\", \"params\"} and each "
                "method is forwarded to matchengine, readhistory or marketprice.")
    optParameters = [["config", "c", DEFAULT_CONFIG, "path of config.json"]]
    optFlags = [["stderr", None, "also write the log to stderr"]]

    def postOptions(self):
        try:
            self["loaded"] = config.load(self["config"])
        except (ConfigError, OSError) as e:
            raise usage.UsageError(str(e))


def makeService(options, reactor=None):
    from accesshttp.server import AccessHTTP
    from utils.alert import AlertSender
    from utils.log import setup_logging
    reactor = reactor or global_reactor
    cfg = options["loaded"]
    top = service.MultiService()
    alert = AlertSender(reactor, cfg.alert.host, cfg.alert.addr) if cfg.alert else None
    setup = setup_logging(cfg.log, alert, stderr=options["stderr"], start=False)
    setup.service().setServiceParent(top)
    top.log_setup = setup
    AccessHTTP(cfg, reactor=reactor).setServiceParent(top)
    return top
