# -*- test-case-name: readhistory.test.test_server -*-
"""`twistd readhistory`: options and the service tree of the readhistory daemon."""

from readhistory import config
from utils.daemon import daemon_options, plugin_reactor, service_tree


Options = daemon_options(
    __file__, config.load,
    ("History queries (balance.history, order.finished, order.deals, "
     "order.finished_detail, market.user_deals) over the binary RPC protocol, "
     "answered from the trade_history tables the matchengine writes."))


def makeService(options, reactor=None):
    from readhistory.server import ReadHistory
    from utils import mysql
    reactor = plugin_reactor(reactor)
    cfg = options["loaded"]
    top = service_tree(cfg, options, reactor)
    db = mysql.from_config(cfg.db_history, max_connections=cfg.worker_num)
    ReadHistory(cfg, db, reactor=reactor).setServiceParent(top)
    return top
