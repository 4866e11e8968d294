# -*- test-case-name: matchengine.test.test_tap -*-
"""`twistd matchengine`: options and the service tree of the matchengine daemon."""

import os

from twisted.application import service
from twisted.internet import reactor as global_reactor
from twisted.python import usage

from matchengine import cli, config
from utils import mysql
from utils.config import ConfigError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf",
                              "config.json")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("The matching engine: balances, order books and matching, served over the "
                "binary RPC protocol; operation log and slices in MySQL, history in MySQL, "
                "deals/orders/balances messages to Kafka.")
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "path of config.json"],
    ]
    optFlags = [
        ["stderr", None, "also write the log to stderr"],
    ]

    def postOptions(self):
        try:
            self["loaded"] = config.load(self["config"])
            self["tables"] = config.build_tables(self["loaded"])
        except (ConfigError, OSError) as e:
            raise usage.UsageError(str(e))


def database(section, **kwargs):
    """A Database for a `db_*` section: MySQL, or SQLite when it names a `path`."""
    return mysql.from_config(section, **kwargs)


def makeService(options, reactor=None):
    from matchengine.server import MatchEngine
    from matchengine.outbox import WriterOutbox
    from utils.log import setup_logging
    from utils.alert import AlertSender
    reactor = reactor or global_reactor
    cfg = options["loaded"]
    assets, markets = options["tables"]
    top = service.MultiService()
    alert = None
    if cfg.alert is not None:
        alert = AlertSender(reactor, cfg.alert.host, cfg.alert.addr)
    setup = setup_logging(cfg.log, alert, stderr=options["stderr"], start=False)
    setup.service().setServiceParent(top)
    top.log_setup = setup
    db_log = database(cfg.db_log, max_connections=2)
    outbox = WriterOutbox(reactor, cfg.db_history, cfg.brokers, workers=cfg.history_thread)
    engine = MatchEngine(cfg, assets, markets, db_log, outbox, reactor=reactor)
    engine.setServiceParent(top)
    cli_service = cli.CLIService(engine, cfg.cli, reactor)
    cli_service.setServiceParent(top)
    return top
