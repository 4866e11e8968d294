# -*- test-case-name: accesshttp.test.test_server -*-
"""`twistd accesshttp`: options and the service tree of the HTTP gateway.

One process serves every connection: on this machine one reactor answers far more requests
per second than the backends accept, so `worker_num` is read for compatibility and only
logged.
"""

from twisted.internet import reactor as global_reactor

from accesshttp import config
from utils.daemon import daemon_options, service_tree


Options = daemon_options(
    __file__, config.load,
    ("The HTTP JSON-RPC gateway: POST {\"id\", \"method\", \"params\"} and each "
     "method is forwarded to matchengine, readhistory or marketprice."))


def makeService(options, reactor=None):
    from accesshttp.server import AccessHTTP
    reactor = reactor or global_reactor
    cfg = options["loaded"]
    top = service_tree(cfg, options, reactor)
    AccessHTTP(cfg, reactor=reactor).setServiceParent(top)
    return top
