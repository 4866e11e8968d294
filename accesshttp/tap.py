# -*- test-case-name: accesshttp.test.test_server -*-
"""`twistd accesshttp`: options and the service tree of the HTTP gateway.

With `worker_num` 1 one process binds and serves every connection.  Above 1 this process
is the listener: it binds `svr` and `monitor` and hands each connection to one of
`worker_num` workers (`--worker N`, network.handoff), each with its own backend
connections, as the original's.
"""

from accesshttp import config
from utils.daemon import daemon_options, gateway_tree, plugin_reactor


Options = daemon_options(
    __file__, config.load,
    ("The HTTP JSON-RPC gateway: POST {\"id\", \"method\", \"params\"} and each "
     "method is forwarded to matchengine, readhistory or marketprice."),
    workers=True)


def makeService(options, reactor=None):
    from accesshttp.server import AccessHTTP
    reactor = plugin_reactor(reactor)
    return gateway_tree(options, reactor, "accesshttp", lambda listen, alerts: (
        AccessHTTP(options["loaded"], reactor=reactor, listen_enabled=listen,
                   alerts=alerts), None))
