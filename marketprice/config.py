# -*- test-case-name: marketprice.test.test_server -*-
"""marketprice's configuration keys (the original's)."""

from utils import config as cfg

SCHEMA = cfg.DAEMON.extend({
    "svr": cfg.RPC_SERVER,
    "deals": cfg.KAFKA_CONSUMER,
    "redis": cfg.REDIS_SENTINEL,
    # a k-line request walks every second, minute or hour it covers: bounded so that one
    # request cannot hold the daemon for long (ten times the original's defaults)
    "sec_max": cfg.Int(604800, min=60, max=6048000),
    "min_max": cfg.Int(525600, min=60, max=5256000),
    "hour_max": cfg.Int(87600, min=24, max=876000),
    "cache_timeout": cfg.Real(0.45),
    "accesshttp": cfg.HttpUrl(),
    # beyond the original: seconds between Redis flushes (the original's is fixed at 10)
    "flush_interval": cfg.Real(10.0, above=0),
})


def load(path):
    return cfg.load(path, SCHEMA)


def load_data(data, source="<config>"):
    return cfg.load_data(data, SCHEMA, source)
