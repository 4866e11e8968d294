# -*- test-case-name: accessws.test.test_server -*-
"""accessws's configuration keys (the original's)."""

from utils import config as cfg

KAFKA = cfg.Section({
    "brokers": cfg.Brokers(),
    "topic": cfg.Str(non_empty=True),
    "partition": cfg.Int(0, min=0, max=cfg.INT32_MAX),
    "limit": cfg.Int(1000, min=1, max=cfg.INT32_MAX),
    "offset": cfg.Int(0),
})

SCHEMA = cfg.DAEMON.extend({
    "svr": cfg.WEBSOCKET_SERVER,
    "monitor": cfg.MONITOR,
    "matchengine": cfg.RPC_CLIENT,
    "marketprice": cfg.RPC_CLIENT,
    "readhistory": cfg.RPC_CLIENT,
    "orders": KAFKA,
    "balances": KAFKA,
    "worker_num": cfg.Int(1, min=1, max=64),
    "auth_url": cfg.HttpUrl(),
    "sign_url": cfg.HttpUrl(),
    "backend_timeout": cfg.Real(1.0, min=0.0),
    "cache_timeout": cfg.Real(0.5),
    "deals_interval": cfg.Real(0.5, above=0),
    "price_interval": cfg.Real(0.5, above=0),
    "state_interval": cfg.Real(0.5, above=0),
    "today_interval": cfg.Real(0.5, above=0),
    "kline_interval": cfg.Real(0.5, above=0),
    "depth_interval": cfg.Real(0.5, above=0),
    # beyond the original: market pushes wait for the other polls of their round (at most
    # this many seconds), so that a round reaches each connection in one send
    "push_window": cfg.Real(0.05, min=0.0, max=1.0),
    "depth_limit": cfg.List(cfg.Int(min=1), non_empty=True),
    "depth_merge": cfg.List(cfg.DecimalStr(), non_empty=True),
    # beyond the original: serve wss:// on the tcp binds with this certificate and key (PEM)
    "tls": cfg.Section({"cert": cfg.Str(non_empty=True), "key": cfg.Str(non_empty=True)},
                       required=False),
})


def load(path, raw=None):
    return cfg.load(path, SCHEMA, raw)


def load_data(data, source="<config>"):
    return cfg.load_data(data, SCHEMA, source)
