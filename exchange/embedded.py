# -*- test-case-name: exchange.test.test_embedded -*-
"""The whole exchange in one process, on stand-ins that need no outside server.

matchengine, readhistory, accesshttp, marketprice, accessws and alertcenter run as the same
services their daemons run, talking to each other over loopback as they do in production,
with these stand-ins under a data folder:

- `trade_log.db` and `trade_history.db`: SQLite through the same adbapi layer as MySQL, with
  the project's schema (history in its 100 shards per table);
- `bus/`: the in-process bus in place of Kafka (topics `deals`, `orders`, `balances`), kept in
  files so that marketprice resumes at its offset; each topic keeps its latest 1,000,000
  messages, in memory too (about 400 bytes each: some 0.4 GB for a full topic), its file
  compacted to them at start;
- `redis.json`: the in-memory store in place of Redis (marketprice's k-lines and status,
  alertcenter's list);
- `log/`: the log of the process, per the C `log` block (`exchange.log` and its rotations);
- `lock`: locked (flock) while an exchange runs on the folder: a second one is refused.

A restart replays the operation log and resumes where it stopped.  Each module's shipped
`conf/config.json` gives everything else (assets, markets, intervals, ...).
"""

import copy
import fcntl
import json
import os
import sqlite3

from twisted.application import service
from twisted.internet import defer

from utils.daemon import OrderedMultiService, gave_up, give_up, service_tree

__all__ = ["PORTS", "DataUnusable", "build", "configs", "create_schema", "lock_data"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HISTORY_TABLES = ("balance_history", "order_history", "order_detail", "deal_history",
                  "user_deal_history")

# the shipped configs' ports
PORTS = {"matchengine": 7316, "matchengine_cli": 7317, "readhistory": 7424,
         "marketprice": 7416, "accesshttp": 8080, "accesshttp_monitor": 8081,
         "accessws": 8090, "accessws_monitor": 8091, "alertcenter": 4444}

EMBEDDED_BROKER = "embedded:9092"   # never connected to: the in-process bus stands in
EMBEDDED_REDIS = {"name": "embedded", "addr": ["127.0.0.1:1"]}


def _shipped(module):
    with open(os.path.join(ROOT, module, "conf", "config.json")) as f:
        data = json.load(f)
    data.pop("alert", None)
    return data


def configs(ports=None, log_path="log/exchange"):
    """Each module's config data (dicts) for the embedded exchange on `ports`."""
    port = dict(PORTS, **(ports or {}))

    def tcp(name):
        return "tcp@127.0.0.1:%d" % port[name]

    def backend(name):
        return {"name": name, "addr": [tcp(name)], "max_pkg_size": 2000000}

    log = {"path": log_path, "flag": "fatal,error,warn,info"}
    out = {name: _shipped(name) for name in ("matchengine", "readhistory", "accesshttp",
                                              "marketprice", "accessws", "alertcenter")}
    for data in out.values():
        data["log"] = dict(log)
    out["matchengine"]["svr"]["bind"] = [tcp("matchengine")]
    out["matchengine"]["cli"] = tcp("matchengine_cli")
    out["matchengine"]["brokers"] = EMBEDDED_BROKER
    out["readhistory"]["svr"]["bind"] = [tcp("readhistory")]
    out["marketprice"]["svr"]["bind"] = [tcp("marketprice")]
    out["marketprice"]["deals"]["brokers"] = EMBEDDED_BROKER
    out["marketprice"]["redis"] = copy.deepcopy(EMBEDDED_REDIS)
    out["marketprice"]["accesshttp"] = "http://127.0.0.1:%d/" % port["accesshttp"]
    for gateway in ("accesshttp", "accessws"):
        out[gateway]["svr"]["bind"] = [tcp(gateway)]
        out[gateway]["monitor"]["bind"] = tcp(gateway + "_monitor")
        for name in ("matchengine", "readhistory", "marketprice"):
            out[gateway][name] = backend(name)
    for topic in ("orders", "balances"):
        out["accessws"][topic]["brokers"] = EMBEDDED_BROKER
    out["alertcenter"]["svr"]["bind"] = [tcp("alertcenter"),
                                         "udp@127.0.0.1:%d" % port["alertcenter"]]
    out["alertcenter"]["redis"] = copy.deepcopy(EMBEDDED_REDIS)
    return out


def create_schema(path, scripts):
    """Create the tables of the project's SQL `scripts` in the SQLite file `path`."""
    from utils import mysql
    dialect = mysql.SQLITE()
    conn = mysql.open_sqlite(path)
    try:
        cursor = conn.cursor()
        for script in scripts:
            with open(os.path.join(ROOT, "depends", "sql", script + ".sql")) as f:
                text = f.read()
            for statement in mysql.split_statements(text):
                for sql in dialect.ddl(statement):
                    cursor.execute(sql)
        conn.commit()
    finally:
        conn.close()


class _Stores(service.Service):
    """Closes the stand-ins once every service added after it has stopped (the top service
    stops its children one after the other, last added first)."""

    def __init__(self, bus, store, databases, lock):
        self.bus, self.store, self.databases, self.lock = bus, store, databases, lock

    def stopService(self):
        service.Service.stopService(self)
        self.store.save()
        self.bus.close()
        for db in self.databases:
            db.close()
        self.lock.close()       # the data folder is free for the next exchange


class _Modules(OrderedMultiService):
    """The exchange's modules, started in stages: those of a stage once every module of the
    stage before has finished starting, so that the gateways' first connections find the
    backends listening.  Starting one may take long (matchengine replays its operation log
    before it listens): `started()` tells when every stage has, each module ready or given
    up.  A module whose start raises gives up (`utils.daemon.give_up`: the process stops,
    saying why), and no later stage starts."""

    def __init__(self, reactor=None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.stages = []        # lists of modules; those added by setServiceParent: the first
        self.names = {}         # id(module) -> its name in the log, where not its class's
        self._done = False
        self._waiting = []      # Deferreds of started()

    def add(self, module, stage, name=None):
        """Add `module` to stage `stage` (0 first); `name` names it in the log (default: its
        class's name, lowercased)."""
        while len(self.stages) <= stage:
            self.stages.append([])
        self.stages[stage].append(module)
        if name is not None:
            self.names[id(module)] = name
        module.setServiceParent(self)

    def startService(self):
        service.Service.startService(self)
        staged = {id(m) for stage in self.stages for m in stage}
        first = [m for m in self if id(m) not in staged]
        stages = [first + (self.stages[0] if self.stages else [])] + self.stages[1:]
        defer.Deferred.fromCoroutine(self._start(stages)).addBoth(self._finished)

    async def _start(self, stages):
        for stage in stages:
            if not self.running or gave_up():
                return          # stopping, or stopping soon: the rest is not started
            starting = []
            for module in stage:
                try:
                    starting.append(module.startService())
                except Exception:
                    give_up(self.reactor, self.log, "%s could not start" % self.name_of(module))
                    return
            await defer.DeferredList([d for d in starting if isinstance(d, defer.Deferred)])

    def _finished(self, result):
        self._done = True
        waiting, self._waiting = self._waiting, []
        for done in waiting:
            done.callback(None)
        return result

    def name_of(self, module):
        return self.names.get(id(module)) or type(module).__name__.lower()

    def started(self):
        """A Deferred firing once every module has finished starting: ready (its state
        loaded, its ports open) or given up (`utils.daemon.gave_up` says which)."""
        if self._done:
            return defer.succeed(None)
        done = defer.Deferred()
        self._waiting.append(done)
        return done


class DataUnusable(Exception):
    """The data folder cannot be used; the message says why, naming it."""


def lock_data(data_dir):
    """The data folder made if missing and locked for this process: the open lock file,
    to keep while the exchange runs (the lock goes with the process, kill -9 included).
    DataUnusable when the folder cannot be made or written, or another exchange holds it:
    two on one folder would both number operations from its last one."""
    try:
        os.makedirs(os.path.join(data_dir, "log"), exist_ok=True)
        lock = open(os.path.join(data_dir, "lock"), "a")
    except OSError as e:
        raise DataUnusable("cannot use the data folder %s: %s" % (data_dir, e.strerror or e))
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise DataUnusable("the data folder %s is in use by another exchange" % data_dir)
    except OSError as e:
        lock.close()
        raise DataUnusable("cannot lock the data folder %s: %s" % (data_dir, e.strerror or e))
    return lock


def build(data_dir, ports=None, reactor=None, stderr=False):
    """The service tree of the embedded exchange keeping its state in `data_dir`.

    Its `modules.started()` tells when the modules are ready to be used."""
    from accesshttp import config as accesshttp_config
    from accesshttp.server import AccessHTTP
    from accessws import config as accessws_config
    from accessws.server import AccessWS
    from accessws.tap import http_get
    from alertcenter import config as alertcenter_config
    from alertcenter.server import AlertCenter
    from marketprice import config as marketprice_config
    from marketprice.server import MarketPrice
    from matchengine import cli
    from matchengine import config as matchengine_config
    from matchengine.history import HistoryWriter
    from matchengine.outbox import LocalOutbox
    from matchengine.server import MatchEngine
    from readhistory import config as readhistory_config
    from readhistory.server import ReadHistory
    from utils import mysql
    from utils.kafka_queue import InProcessBus
    from utils.redisdb import MemoryRedis

    if reactor is None:
        from twisted.internet import reactor
    data_dir = os.path.abspath(data_dir)
    lock = lock_data(data_dir)
    # before the log is set up: a folder refused leaves nothing behind
    log_path = os.path.join(data_dir, "trade_log.db")
    history_path = os.path.join(data_dir, "trade_history.db")
    try:
        create_schema(log_path, ["trade_log"])
        create_schema(history_path, ["trade_history", "trade_history_shards"])
    except (sqlite3.Error, OSError) as e:
        lock.close()
        raise DataUnusable("cannot make the databases in %s: %s" % (data_dir, e)) from None
    try:
        bus = InProcessBus(reactor=reactor, path=os.path.join(data_dir, "bus"))
        store = MemoryRedis(os.path.join(data_dir, "redis.json"), reactor=reactor)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        lock.close()
        raise DataUnusable("cannot read the bus and store kept in %s: %s" % (data_dir, e)) \
            from None
    data = configs(ports, os.path.join(data_dir, "log", "exchange"))
    port = dict(PORTS, **(ports or {}))
    data["matchengine"]["alert"] = {"host": "exchange",
                                    "addr": "127.0.0.1:%d" % port["alertcenter"]}
    cfg = {
        "matchengine": matchengine_config.load_data(data["matchengine"], "matchengine"),
        "readhistory": readhistory_config.load_data(data["readhistory"], "readhistory"),
        "accesshttp": accesshttp_config.load_data(data["accesshttp"], "accesshttp"),
        "marketprice": marketprice_config.load_data(data["marketprice"], "marketprice"),
        "accessws": accessws_config.load_data(data["accessws"], "accessws"),
        "alertcenter": alertcenter_config.load_data(data["alertcenter"], "alertcenter"),
    }

    # one log for the process, its FATAL lines to the embedded alertcenter
    top = service_tree(cfg["matchengine"], {"stderr": stderr}, reactor)

    db_log = mysql.connect_sqlite(log_path, reactor=reactor)
    db_history = mysql.connect_sqlite(history_path, reactor=reactor)
    # started first, stopped last
    _Stores(bus, store, [db_log, db_history], lock).setServiceParent(top)
    modules = _Modules(reactor)
    modules.setServiceParent(top)

    me = cfg["matchengine"]
    assets, markets = matchengine_config.build_tables(me)
    outbox = LocalOutbox(HistoryWriter(db_history, reactor, workers=1), bus.producer())
    # the backends first, the gateways once they listen
    engine = MatchEngine(me, assets, markets, db_log, outbox, reactor=reactor)
    modules.add(engine, 0)
    modules.add(cli.CLIService(engine, me.cli, reactor), 0, name="matchengine cli")
    modules.add(ReadHistory(cfg["readhistory"], db_history, reactor=reactor), 0)
    modules.add(AlertCenter(cfg["alertcenter"], store, reactor=reactor), 0)

    mp = cfg["marketprice"]

    def deals_consumer(offset, on_message, last_digest):
        return bus.consumer(mp.deals.topic, on_message, offset=offset, limit=mp.deals.limit,
                            last_digest=last_digest,
                            name="marketprice deals")

    def market_list():
        # what accesshttp's market.list would answer, its matchengine being this one: the
        # daemon asks the gateway, which here starts after it
        return defer.succeed(list(markets))
    modules.add(MarketPrice(mp, store, deals_consumer, market_list, reactor=reactor), 0)

    modules.add(AccessHTTP(cfg["accesshttp"], reactor=reactor), 1)

    def ws_consumer(section, on_message):
        return bus.consumer(section.topic, on_message, limit=section.limit,
                            name="accessws " + section.topic)
    modules.add(AccessWS(cfg["accessws"], reactor=reactor, http_get=http_get(reactor),
                         consumer_factory=ws_consumer), 1)
    top.ports = port
    top.modules = modules
    return top
