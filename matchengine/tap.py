# -*- test-case-name: matchengine.test.test_cli -*-
"""`twistd matchengine`: options and the service tree of the matchengine daemon."""

import os


from matchengine import cli, config
from utils import mysql
from utils.config import ConfigError
from utils.daemon import daemon_options, plugin_reactor, service_tree

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf", "config.json")


def _tables(options):
    """The assets and markets of the config, its errors naming the file and key."""
    try:
        options["tables"] = config.build_tables(options["loaded"])
    except ConfigError as e:
        raise ConfigError("%s: %s" % (options["config"], e)) from None


Options = daemon_options(
    __file__, config.load,
    ("The matching engine: balances, order books and matching, served over the "
     "binary RPC protocol; operation log and slices in MySQL, history in MySQL, "
     "deals/orders/balances messages to Kafka."),
    prepare=_tables)


def database(section, **kwargs):
    """A MySQL Database for a `db_*` section."""
    return mysql.from_config(section, **kwargs)


def makeService(options, reactor=None):
    from matchengine.server import MatchEngine
    from matchengine.operlog import autocommit_connection
    from matchengine.outbox import WriterOutbox
    reactor = plugin_reactor(reactor)
    cfg = options["loaded"]
    assets, markets = options["tables"]
    top = service_tree(cfg, options, reactor)
    db_log = database(cfg.db_log, max_connections=2)
    outbox = WriterOutbox(reactor, cfg.db_history, cfg.brokers, workers=cfg.history_thread,
                          lock=os.path.abspath(cfg.log.path + ".writer.lock"))
    engine = MatchEngine(cfg, assets, markets, db_log, outbox, reactor=reactor,
                         db_log_commits=autocommit_connection(cfg.db_log))
    engine.setServiceParent(top)
    cli_service = cli.CLIService(engine, cfg.cli, reactor)
    cli_service.setServiceParent(top)
    return top
