# -*- test-case-name: accessws.test.test_server -*-
"""`twistd accessws`: options and the service tree of the websocket gateway.

One process serves every connection (`worker_num` is read for compatibility); several
accessws can run behind a load balancer, each with its own subscriptions and consumers.
"""

import os

from twisted.application import service
from twisted.internet import reactor as global_reactor
from twisted.python import usage

from accessws import config
from utils.config import ConfigError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf",
                              "config.json")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("The websocket gateway: queries, market-data subscriptions polled from the "
                "backends, order and asset pushes from Kafka, server.auth through auth_url.")
    optParameters = [["config", "c", DEFAULT_CONFIG, "path of config.json"]]
    optFlags = [["stderr", None, "also write the log to stderr"]]

    def postOptions(self):
        try:
            self["loaded"] = config.load(self["config"])
        except (ConfigError, OSError) as e:
            raise usage.UsageError(str(e))


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
    from utils.alert import AlertSender
    from utils.log import setup_logging
    reactor = reactor or global_reactor
    cfg = options["loaded"]
    top = service.MultiService()
    alert = AlertSender(reactor, cfg.alert.host, cfg.alert.addr) if cfg.alert else None
    setup = setup_logging(cfg.log, alert, stderr=options["stderr"], start=False)
    setup.service().setServiceParent(top)
    top.log_setup = setup
    AccessWS(cfg, reactor=reactor, http_get=http_get(reactor),
             consumer_factory=kafka_consumers(reactor)).setServiceParent(top)
    return top
