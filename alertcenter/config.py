# -*- test-case-name: alertcenter.test.test_server -*-
"""alertcenter's configuration keys (the original's), plus the mail script's `mail`."""

from utils import config as cfg

MAIL = cfg.Section({
    "host": cfg.Str("127.0.0.1"),
    "port": cfg.Int(25, min=1, max=65535),
    "user": cfg.Str(""),
    "password": cfg.Str(""),
    "starttls": cfg.Bool(False),
    "sender": cfg.Str(non_empty=True),
    "recipients": cfg.List(cfg.Str(non_empty=True), non_empty=True),
    "subject": cfg.Str("viabtc server error"),
    "interval": cfg.Real(60.0),
}, required=False)

SCHEMA = cfg.Section({
    "process": cfg.PROCESS,
    "log": cfg.LOG,
    "svr": cfg.PLAIN_SERVER,
    "redis": cfg.REDIS_SENTINEL,
    "mail": MAIL,
})


def load(path):
    return cfg.load(path, SCHEMA)


def load_data(data, source="<config>"):
    return cfg.load_data(data, SCHEMA, source)
