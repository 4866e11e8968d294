# -*- test-case-name: readhistory.test.test_server -*-
"""readhistory's configuration keys (the original's)."""

from utils import config as cfg

SCHEMA = cfg.DAEMON.extend({
    "svr": cfg.RPC_SERVER,
    "db_history": cfg.MYSQL,
    "worker_num": cfg.Int(10, min=1, max=1000),
})


def load(path):
    return cfg.load(path, SCHEMA)


def load_data(data, source="<config>"):
    return cfg.load_data(data, SCHEMA, source)
