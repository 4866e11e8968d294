# -*- test-case-name: alertcenter.test.test_server -*-
"""`twistd alertcenter`: the alert collector."""

from alertcenter import config
from utils.daemon import daemon_options, plugin_reactor, service_tree


Options = daemon_options(
    __file__, config.load,
    ("Collects the FATAL log lines every module sends (TCP or UDP) into the Redis "
     "list alert:message; `python -m alertcenter.send_alert` mails them."))


def makeService(options, reactor=None):
    from alertcenter.server import AlertCenter
    from utils import redisdb
    reactor = plugin_reactor(reactor)
    cfg = options["loaded"]
    # as the original: day files, 100 MiB, 10 files, 7 days and no pid on the lines,
    # whatever the config says
    top = service_tree(cfg, options, reactor, alerts=False, shift="day",
                       max_size=100 * 1024 * 1024, num=10, keep=7, pid=False)
    AlertCenter(cfg, redisdb.from_config(cfg.redis), reactor=reactor).setServiceParent(top)
    return top
