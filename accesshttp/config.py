# -*- test-case-name: accesshttp.test.test_server -*-
"""accesshttp's configuration keys (the original's)."""

from utils import config as cfg

SCHEMA = cfg.DAEMON.extend({
    "svr": cfg.HTTP_SERVER,
    "monitor": cfg.MONITOR,
    "matchengine": cfg.RPC_CLIENT,
    "marketprice": cfg.RPC_CLIENT,
    "readhistory": cfg.RPC_CLIENT,
    "timeout": cfg.Real(1.0, min=0.0),
    "worker_num": cfg.Int(1, min=1, max=64),
})


def load(path, raw=None):
    return cfg.load(path, SCHEMA, raw)


def load_data(data, source="<config>"):
    return cfg.load_data(data, SCHEMA, source)
