# -*- test-case-name: readhistory.test.test_server -*-
"""`twistd readhistory`: options and the service tree of the readhistory daemon."""

import os

from twisted.application import service
from twisted.internet import reactor as global_reactor
from twisted.python import usage

from readhistory import config
from utils.config import ConfigError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf",
                              "config.json")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("History queries (balance.history, order.finished, order.deals, "
                "order.finished_detail, market.user_deals) over the binary RPC protocol, "
                "answered from the trade_history tables the matchengine writes.")
    optParameters = [["config", "c", DEFAULT_CONFIG, "path of config.json"]]
    optFlags = [["stderr", None, "also write the log to stderr"]]

    def postOptions(self):
        try:
            self["loaded"] = config.load(self["config"])
        except (ConfigError, OSError) as e:
            raise usage.UsageError(str(e))


def makeService(options, reactor=None):
    from readhistory.server import ReadHistory
    from utils import mysql
    from utils.alert import AlertSender
    from utils.log import setup_logging
    reactor = reactor or global_reactor
    cfg = options["loaded"]
    top = service.MultiService()
    alert = AlertSender(reactor, cfg.alert.host, cfg.alert.addr) if cfg.alert else None
    setup = setup_logging(cfg.log, alert, stderr=options["stderr"], start=False)
    setup.service().setServiceParent(top)
    top.log_setup = setup
    db = mysql.from_config(cfg.db_history, max_connections=cfg.worker_num)
    ReadHistory(cfg, db, reactor=reactor).setServiceParent(top)
    return top
