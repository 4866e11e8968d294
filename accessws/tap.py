# -*- test-case-name: accessws.test.test_server -*-
"""`twistd accessws`: options and the service tree of the websocket gateway.

One process serves every connection (`worker_num` is read for compatibility); several
accessws can run behind a load balancer, each with its own subscriptions and consumers.
"""

from twisted.internet import reactor as global_reactor

from accessws import config
from utils.daemon import daemon_options, service_tree


Options = daemon_options(
    __file__, config.load,
    ("The websocket gateway: queries, market-data subscriptions polled from the "
     "backends, order and asset pushes from Kafka, server.auth through auth_url."))


def http_get(reactor):
    import treq

    async def get(url, headers, timeout):
        # the caller times the request out (cancelling it); no pooled connections are kept
        response = await treq.get(url, headers={k: [v] for k, v in headers.items()},
                                  persistent=False, reactor=reactor)
        return await response.content()

    def start(url, headers, timeout):
        from twisted.internet import defer
        return defer.Deferred.fromCoroutine(get(url, headers, timeout))
    return start


def kafka_consumers(reactor):
    from utils.kafka_queue import KafkaConsumerService

    def make(section, on_message):
        # only what is produced from now on, as the original
        return KafkaConsumerService(section.brokers, section.topic, on_message,
                                    partition=section.partition, offset="latest",
                                    limit=section.limit, reactor=reactor,
                                    name="accessws " + section.topic)
    return make


def makeService(options, reactor=None):
    from accessws.server import AccessWS
    reactor = reactor or global_reactor
    cfg = options["loaded"]
    top = service_tree(cfg, options, reactor)
    AccessWS(cfg, reactor=reactor, http_get=http_get(reactor),
             consumer_factory=kafka_consumers(reactor)).setServiceParent(top)
    return top
