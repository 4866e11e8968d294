# -*- test-case-name: marketprice.test.test_server -*-
"""`twistd marketprice`: options and the service tree of the market data daemon."""

import json
import os
import time

from twisted.application import service
from twisted.internet import reactor as global_reactor
from twisted.python import usage

from marketprice import config
from utils.config import ConfigError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf",
                              "config.json")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Market data: consumes the matchengine's deals from Kafka, builds k-lines, "
                "market status and recent deals, keeps them in Redis and serves them over the "
                "binary RPC protocol.")
    optParameters = [["config", "c", DEFAULT_CONFIG, "path of config.json"]]
    optFlags = [["stderr", None, "also write the log to stderr"]]

    def postOptions(self):
        try:
            self["loaded"] = config.load(self["config"])
        except (ConfigError, OSError) as e:
            raise usage.UsageError(str(e))


def market_list_from(url, reactor, timeout=1.0):
    """A function asking accesshttp (`url`) for the market names, as the original does."""
    import treq

    async def ask():
        body = json.dumps({"method": "market.list", "params": [], "id": int(time.time())})
        response = await treq.post(url, body.encode(),
                                   headers={"Content-Type": ["application/json"]},
                                   timeout=timeout, reactor=reactor)
        reply = json.loads(await response.content())
        if reply.get("error") is not None or not isinstance(reply.get("result"), list):
            raise ValueError("market.list answered %r" % (reply,))
        return [m["name"] for m in reply["result"]]

    def market_list():
        from twisted.internet import defer
        return defer.Deferred.fromCoroutine(ask())
    return market_list


def makeService(options, reactor=None):
    from marketprice.server import MarketPrice
    from utils import redisdb
    from utils.alert import AlertSender
    from utils.kafka_queue import KafkaConsumerService
    from utils.log import setup_logging
    reactor = reactor or global_reactor
    cfg = options["loaded"]
    top = service.MultiService()
    alert = AlertSender(reactor, cfg.alert.host, cfg.alert.addr) if cfg.alert else None
    setup = setup_logging(cfg.log, alert, stderr=options["stderr"], start=False)
    setup.service().setServiceParent(top)
    top.log_setup = setup
    deals = cfg.deals

    def consumer(offset, on_message):
        return KafkaConsumerService(deals.brokers, deals.topic, on_message,
                                    partition=deals.partition, offset=offset,
                                    limit=deals.limit, reactor=reactor,
                                    name="marketprice deals")
    MarketPrice(cfg, redisdb.from_config(cfg.redis), consumer,
                market_list_from(cfg.accesshttp, reactor), reactor=reactor).setServiceParent(top)
    return top
