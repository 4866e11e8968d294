# -*- test-case-name: alertcenter.test.test_server -*-
"""`twistd alertcenter`: the alert collector."""

import os

from twisted.application import service
from twisted.internet import reactor as global_reactor
from twisted.python import usage

from alertcenter import config
from utils.config import ConfigError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf",
                              "config.json")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Collects the FATAL log lines every module sends (TCP or UDP) into the Redis "
                "list alert:message; `python -m alertcenter.send_alert` mails them.")
    optParameters = [["config", "c", DEFAULT_CONFIG, "path of config.json"]]
    optFlags = [["stderr", None, "also write the log to stderr"]]

    def postOptions(self):
        try:
            self["loaded"] = config.load(self["config"])
        except (ConfigError, OSError) as e:
            raise usage.UsageError(str(e))


def makeService(options, reactor=None):
    from alertcenter.server import AlertCenter
    from utils import redisdb
    from utils.log import setup_logging
    reactor = reactor or global_reactor
    cfg = options["loaded"]
    top = service.MultiService()
    # as the original: day files, 100 MiB, 10 files, 7 days, whatever the config says
    setup = setup_logging(cfg.log, None, stderr=options["stderr"], start=False, shift="day",
                          max_size=100 * 1024 * 1024, num=10, keep=7)
    setup.service().setServiceParent(top)
    top.log_setup = setup
    AlertCenter(cfg, redisdb.from_config(cfg.redis), reactor=reactor).setServiceParent(top)
    return top
