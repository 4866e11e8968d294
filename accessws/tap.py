# -*- test-case-name: accessws.test.test_server -*-
"""`twistd accessws`: options and the service tree of the websocket gateway.

With `worker_num` 1 one process binds and serves every connection.  Above 1 this process
is the listener: it binds `svr` and `monitor` and hands each connection to one of
`worker_num` workers (`--worker N`, network.handoff), each an independent accessws with its
own backend connections, pollers, subscriptions and Kafka consumers, as the original's.
Several accessws can also run behind a load balancer.
"""

from accessws import config
from utils.daemon import daemon_options, gateway_tree, plugin_reactor


def _check_tls(options):
    from accessws.server import check_tls
    check_tls(options["config"], options["loaded"])


Options = daemon_options(
    __file__, config.load,
    ("The websocket gateway: queries, market-data subscriptions polled from the "
     "backends, order and asset pushes from Kafka, server.auth through auth_url."),
    prepare=_check_tls, workers=True)


def http_get(reactor):
    import treq

    async def get(url, headers, timeout):
        # the caller times the request out (cancelling it); no pooled connections are kept;
        # a redirect is not followed (the token would go where the answer points)
        response = await treq.get(url, headers={k: [v] for k, v in headers.items()},
                                  persistent=False, allow_redirects=False, reactor=reactor)
        return await response.content()

    def start(url, headers, timeout):
        from twisted.internet import defer
        return defer.Deferred.fromCoroutine(get(url, headers, timeout))
    return start


def kafka_consumers(reactor, alerts=True):
    from utils.kafka_queue import KafkaConsumerService
    from utils.outage import ALERT_AFTER, Outage, on_log
    # the consumers of one broker list tell its outage once, not once for each topic
    outages = {}

    def make(section, on_message):
        brokers = section.brokers
        outage = outages.get(brokers)
        if outage is None:
            outage = outages[brokers] = Outage(
                "accessws kafka", on_log(KafkaConsumerService.log),
                alert_after=ALERT_AFTER if alerts else None, clock=reactor.seconds)
        # only what is produced from now on, as the original
        return KafkaConsumerService(brokers, section.topic, on_message,
                                    partition=section.partition, offset="latest",
                                    limit=section.limit, reactor=reactor,
                                    name="accessws " + section.topic, outage=outage)
    return make


def makeService(options, reactor=None):
    from accessws.server import AccessWS, tls_factory
    reactor = plugin_reactor(reactor)
    cfg = options["loaded"]

    def build(listen, alerts):
        ws = AccessWS(cfg, reactor=reactor, http_get=http_get(reactor),
                      consumer_factory=kafka_consumers(reactor, alerts), listen=listen,
                      alerts=alerts)
        return ws, tls_factory(cfg, ws.factory)
    return gateway_tree(options, reactor, "accessws", build)
