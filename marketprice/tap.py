# -*- test-case-name: marketprice.test.test_tap -*-
"""`twistd marketprice`: options and the service tree of the market data daemon."""

import json
import time


from marketprice import config
from utils.daemon import daemon_options, plugin_reactor, service_tree


Options = daemon_options(
    __file__, config.load,
    ("Market data: consumes the matchengine's deals from Kafka, builds k-lines, "
     "market status and recent deals, keeps them in Redis and serves them over the "
     "binary RPC protocol."))


def market_list_from(url, reactor, timeout=1.0, pool=None):
    """A function asking accesshttp (`url`) for the market names, as the original does
    (`pool`: an HTTPConnectionPool, by default treq's)."""
    import treq

    async def ask():
        body = json.dumps({"method": "market.list", "params": [], "id": int(time.time())})
        response = await treq.post(url, body.encode(),
                                   headers={"Content-Type": ["application/json"]},
                                   timeout=timeout, reactor=reactor, pool=pool)
        content = await response.content()
        if response.code != 200:
            raise ValueError("HTTP status %d, %s" % (
                response.code, "body %r" % content[:200] if content else "empty body"))
        try:
            reply = json.loads(content)
        except ValueError:
            raise ValueError("an answer that is not JSON: %r" % content[:200]) from None
        if (not isinstance(reply, dict) or reply.get("error") is not None
                or not isinstance(reply.get("result"), list)):
            raise ValueError("market.list answered %r" % (reply,))
        return [m["name"] for m in reply["result"]]

    def market_list():
        from twisted.internet import defer
        return defer.Deferred.fromCoroutine(ask())
    return market_list


def makeService(options, reactor=None):
    from marketprice.server import MarketPrice
    from utils import redisdb
    from utils.kafka_queue import KafkaConsumerService
    reactor = plugin_reactor(reactor)
    cfg = options["loaded"]
    top = service_tree(cfg, options, reactor)
    deals = cfg.deals

    def consumer(offset, on_message, last_digest):
        return KafkaConsumerService(deals.brokers, deals.topic, on_message,
                                    partition=deals.partition, offset=offset,
                                    last_digest=last_digest,
                                    limit=deals.limit, reactor=reactor,
                                    name="marketprice deals")
    MarketPrice(cfg, redisdb.from_config(cfg.redis), consumer,
                market_list_from(cfg.accesshttp, reactor), reactor=reactor).setServiceParent(top)
    return top
