# -*- test-case-name: matchengine.test.test_config -*-
"""matchengine's configuration: the original's keys, plus the durability settings.

`load(path)` reads `config.json`; `build_tables(config)` turns its `assets` and `markets`
into `Asset` and `Market` descriptions, refusing what the original refuses at start-up
(unknown assets, precisions that would truncate deal values or fees).
"""

from decimal import Decimal
from typing import NamedTuple

from utils import config as cfg
from utils import decimals

ASSET_NAME_MAX = 15
MARKET_NAME_MAX = 15

SCHEMA = cfg.DAEMON.extend({
    "svr": cfg.RPC_SERVER,
    "cli": cfg.CLI,
    "db_log": cfg.MYSQL,
    "db_history": cfg.MYSQL,
    "assets": cfg.List(cfg.Section({
        "name": cfg.Str(non_empty=True, max_length=ASSET_NAME_MAX),
        "prec_save": cfg.Int(min=0, max=30),
        "prec_show": cfg.Int(None, min=0, max=30),
    }), non_empty=True),
    "markets": cfg.List(cfg.Section({
        "name": cfg.Str(non_empty=True, max_length=MARKET_NAME_MAX),
        "stock": cfg.Section({"name": cfg.Str(), "prec": cfg.Int(min=0, max=30)}),
        "money": cfg.Section({"name": cfg.Str(), "prec": cfg.Int(min=0, max=30)}),
        "fee_prec": cfg.Int(4, min=0, max=30),
        "min_amount": cfg.DecimalStr("0.01"),
    })),
    "brokers": cfg.Brokers(),
    "slice_interval": cfg.Int(86400, min=1),
    "slice_keeptime": cfg.Int(259200, min=1),
    "history_thread": cfg.Int(10, min=1, max=100),
    "cache_timeout": cfg.Real(0.45),
    # beyond the original: replies to writes wait for their operation-log commit
    "durable": cfg.Bool(True),
    "commit_window": cfg.Real(0.0, max=1.0),
    "commit_stall": cfg.Real(0.5, max=60.0, above=0.0),
    "queue_limits": cfg.Section({
        "operlog": cfg.Int(100000, min=1),
        "history": cfg.Int(1000000, min=1),
        "messages": cfg.Int(1000000, min=1),
    }, required=False),
})


class Asset(NamedTuple):
    name: str
    prec_save: int
    prec_show: int


class Market(NamedTuple):
    name: str
    stock: str
    stock_prec: int
    money: str
    money_prec: int
    fee_prec: int
    min_amount: Decimal


def load(path):
    return cfg.load(path, SCHEMA)


def load_data(data, source="<config>"):
    return cfg.load_data(data, SCHEMA, source)


def build_tables(config):
    """({name: Asset}, {name: Market}) in config order; ConfigError naming the bad entry."""
    assets = {}
    for i, a in enumerate(config["assets"]):
        if a["name"] in assets:
            raise cfg.ConfigError("assets[%d].name: %r repeated" % (i, a["name"]))
        show = a["prec_show"] if a["prec_show"] is not None else a["prec_save"]
        assets[a["name"]] = Asset(a["name"], a["prec_save"], show)
    markets = {}
    for i, m in enumerate(config["markets"]):
        path = "markets[%d]" % i
        if m["name"] in markets:
            raise cfg.ConfigError("%s.name: %r repeated" % (path, m["name"]))
        for side in ("stock", "money"):
            if m[side]["name"] not in assets:
                raise cfg.ConfigError("%s.%s.name: unknown asset %r" % (
                    path, side, m[side]["name"]))
        stock, money = assets[m["stock"]["name"]], assets[m["money"]["name"]]
        sp, mp, fp = m["stock"]["prec"], m["money"]["prec"], m["fee_prec"]
        if sp + mp > money.prec_save:
            raise cfg.ConfigError("%s: stock.prec + money.prec (%d) exceeds prec_save of %s (%d)"
                                  % (path, sp + mp, money.name, money.prec_save))
        if sp + fp > stock.prec_save:
            raise cfg.ConfigError("%s: stock.prec + fee_prec (%d) exceeds prec_save of %s (%d)"
                                  % (path, sp + fp, stock.name, stock.prec_save))
        if mp + fp > money.prec_save:
            raise cfg.ConfigError("%s: money.prec + fee_prec (%d) exceeds prec_save of %s (%d)"
                                  % (path, mp + fp, money.name, money.prec_save))
        if m["min_amount"] < 0:
            raise cfg.ConfigError("%s.min_amount: must not be negative" % path)
        markets[m["name"]] = Market(m["name"], stock.name, sp, money.name, mp, fp,
                                    m["min_amount"])
    return assets, markets


def tables_data(assets, markets):
    """`build_tables`' result as JSON values (`tables_from_data` reads them back)."""
    return {"assets": [list(asset) for asset in assets.values()],
            "markets": [list(market[:-1]) + [str(market.min_amount)]
                        for market in markets.values()]}


def tables_from_data(data):
    """({name: Asset}, {name: Market}) from `tables_data`."""
    assets = {a[0]: Asset(*a) for a in data["assets"]}
    markets = {m[0]: Market(*m[:-1], decimals.parse(m[-1])) for m in data["markets"]}
    return assets, markets


def example_tables():
    """The original's example assets and markets (what the recorded transcripts use)."""
    names = ["BTC", "LTC", "ETH", "ETC", "ZEC", "XMR", "DSH"]
    assets = {"BCH": Asset("BCH", 20, 8)}
    assets.update((n, Asset(n, 12, 8)) for n in names)
    markets = {n + "BCH": Market(n + "BCH", n, 8, "BCH", 8, 4, decimals.parse("0.001"))
               for n in names}
    return assets, markets
