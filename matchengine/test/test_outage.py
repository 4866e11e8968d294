# -*- test-case-name: matchengine.test.test_outage -*-
"""The matchengine through outages of MySQL and of the Kafka broker: acknowledged means
committed, nothing is lost, and everything catches up once the service is back."""

import json

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from matchengine import config, engine
from matchengine.effects import TOPIC_ORDERS
from matchengine.test.test_server import Harness
from utils import testing
from utils.kafka_queue import KafkaConsumerService
from utils.testing import until

DEPOSITS = [(102, [1, "BTC", "deposit", 1, "10", {}]),
            (102, [2, "BCH", "deposit", 2, "100000", {}])]
DURING_MYSQL = [(201, [1, "BTCBCH", 1, "1", "8000", "0.002", "0.001", "a"]),
                (201, [2, "BTCBCH", 2, "1", "8000", "0.002", "0.001", "b"]),
                (201, [1, "BTCBCH", 1, "2", "8100", "0.002", "0.001", "c"])]
REFUSED = (201, [2, "BTCBCH", 2, "0.5", "8100", "0.002", "0.001", "d"])
DURING_KAFKA = [(201, [2, "BTCBCH", 2, "1", "8100", "0.002", "0.001", "e"]),
                (204, [1, "BTCBCH", 3])]


def expected_order_events():
    """(event, order id) of every `orders` message the accepted operations make."""
    eng = engine.Engine(*config.example_tables())
    events = []
    for command, params in DEPOSITS + DURING_MYSQL + DURING_KAFKA:
        eng.execute(command, json.loads(json.dumps(params)), 1.0)
        for topic, text in eng.effects.take()[1]:
            if topic == TOPIC_ORDERS:
                message = json.loads(text)
                events.append((message["event"], message["order"]["id"]))
    return events


class OutageHarness(Harness):
    """A Harness whose MySQL and Kafka broker are reached through proxies the test cuts."""

    def __init__(self, test):
        info = testing.require("mysql")
        self.mysql = testing.CuttableProxy(int(info["port"])).up()
        test.addCleanup(self.mysql.down)
        # the broker advertises the proxy, so that every connection goes through it
        self.kafka = testing.CuttableProxy(testing.free_port())
        broker = testing.KafkaBroker(port=self.kafka.target_port,
                                     advertise_port=self.kafka.port).start()
        test.addCleanup(broker.stop)
        self.kafka.up()
        test.addCleanup(self.kafka.down)
        super().__init__(test, broker)
        self.mysql_port = self.mysql.port

    async def cleanup(self):
        # a test that failed during an outage: the service can only stop with both back
        for proxy in (self.mysql, self.kafka):
            if proxy.listening is None:
                proxy.up()
        await super().cleanup()


class OutageTests(TestCase):

    timeout = 180

    async def outages(self):
        h = OutageHarness(self)
        await h.start(queue_limits={"operlog": 3})
        for command, params in DEPOSITS:
            reply = await h.call(command, params)
            self.assertEqual(reply["result"], {"status": "success"})

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        # MySQL goes away: writes wait for their commit, and so does a read behind them
        await h.mysql.down()
        writes = [h.client.call(command, params, 30.0) for command, params in DURING_MYSQL]
        read = h.client.call(101, [1, "BTC"], 30.0)
        answered = []
        for d in writes + [read]:
            d.addBoth(lambda result: answered.append(result) or result)
        # past queue_limits.operlog the next write is refused at once, changing nothing
        refused = await h.call(*REFUSED)
        self.assertEqual(refused["error"], {"code": 3, "message": "service unavailable"})
        await deferLater(reactor, 2.5, lambda: None)
        self.assertEqual(answered, [])
        self.assertEqual(h.service.operlog.pending_rows, 3)

        # back: the retried batch commits, replies leave in order, history catches up
        h.mysql.up()
        results = [reply["result"] for reply in await defer.gatherResults(writes + [read])]
        self.assertEqual([r["id"] for r in results[:3]], [1, 2, 3])
        self.assertEqual([r["left"] for r in results[:3]], ["1", "0e-8", "2"])
        self.assertEqual(results[3], {"BTC": {"available": "7", "freeze": "2"}})
        self.assertEqual(h.service.engine.order_id, 3)
        hist = h.database(h.history_db)

        async def deals_written():
            rows = await hist.query("SELECT (SELECT COUNT(*) FROM `user_deal_history_1`) + "
                                    "(SELECT COUNT(*) FROM `user_deal_history_2`)")
            return rows[0][0]
        await self.until_value(deals_written, 2, "history written after the outage")

        # the broker goes away: writes are answered as usual, their messages wait
        await h.kafka.down()
        for command, params in DURING_KAFKA:
            started = reactor.seconds()
            reply = await h.call(command, params)
            self.assertLess(reactor.seconds() - started, 2.0)
            self.assertIsNone(reply["error"])
        await deferLater(reactor, 1.0, lambda: None)
        self.assertGreater(h.service.outbox.pending_messages, 0)
        h.kafka.up()
        await until(lambda: h.service.outbox.pending_messages == 0, seconds=60,
                    what="messages sent after the broker came back")
        got = self.consumed(h, TOPIC_ORDERS)
        expected = expected_order_events()
        await until(lambda: len(got) >= len(expected), what="every order message")
        await deferLater(reactor, 0.5, lambda: None)
        self.assertEqual([(m["event"], m["order"]["id"]) for m in got], expected)
        # each outage told when it began and when it ended, not at each retry
        told = [(e["log_level"], formatEvent(e)) for e in events]
        for prefix in ("operation log: w", "writer: kafka: "):
            lines = [(level, text) for level, text in told if text.startswith(prefix)]
            self.assertEqual([level for level, _ in lines], [LogLevel.error, LogLevel.warn],
                             lines)
            self.assertIn("working again after", lines[1][1])

        # and the log alone rebuilds what was acknowledged
        before = h.state()
        await h.stop()
        await h.start()
        self.assertEqual(h.state(), before)
        await h.stop()
        self.flushLoggedErrors()

    def consumed(self, h, topic):
        """A list filling with the messages of `topic`, decoded, from the first."""
        got = []
        consumer = KafkaConsumerService(h.broker.address, topic,
                                        lambda offset, value: got.append(json.loads(value)),
                                        offset="earliest", reactor=reactor)
        consumer.startService()
        self.addCleanup(consumer.stopService)
        return got

    async def until_value(self, read, value, what):
        for _ in range(300):
            if await read() == value:
                return
            await deferLater(reactor, 0.1, lambda: None)
        self.fail("timed out waiting for " + what)

    async def stop_during_kafka_outage(self):
        from matchengine import outbox
        from matchengine.effects import TOPIC_BALANCES
        self.patch(outbox, "STOP_PATIENCE", 1.0)
        h = OutageHarness(self)
        await h.start()
        await h.call(*DEPOSITS[0])
        await until(lambda: h.service.outbox.pending_messages == 0, what="first message")
        await h.kafka.down()
        reply = await h.call(*DEPOSITS[1])
        self.assertEqual(reply["result"], {"status": "success"})
        started = reactor.seconds()
        await h.stop()          # the writer cannot send: the stop ends all the same
        self.assertLess(reactor.seconds() - started, 10.0)
        h.kafka.up()
        await h.start()         # and the next start sends what the stop left
        got = self.consumed(h, TOPIC_BALANCES)
        await until(lambda: len(got) >= 2, seconds=60, what="both balance messages")
        self.assertEqual([(m[1], m[2], m[4]) for m in got[:2]],
                         [(1, "BTC", "10.00000000"), (2, "BCH", "100000.00000000")])
        await h.stop()
        self.flushLoggedErrors()

    def test_stop_during_kafka_outage(self):
        """A stop while the broker is away ends once the writer has confirmed nothing for
        a while; the messages it could not send arrive after the next start."""
        return defer.Deferred.fromCoroutine(self.stop_during_kafka_outage())

    async def stalled_log(self):
        import pymysql
        h = Harness(self)
        await h.start()
        self.assertEqual((await h.call(*DEPOSITS[1]))["result"], {"status": "success"})
        # a backup's lock on the log's table: the commit waits, failing nothing
        locker = pymysql.connect(**dict(testing.mysql_connect_kwargs(), database=h.log_db))
        self.addCleanup(locker.close)
        locker.cursor().execute("LOCK TABLES `%s` WRITE" % h.service.operlog.table)
        held = h.client.call(102, [2, "BCH", "deposit", 3, "5", {}], 30.0)
        await until(lambda: h.service.operlog.stalled, what="the log stalled")
        # what comes meanwhile is refused at once, not applied to wait past the gateways'
        # timeouts, reads too
        started = reactor.seconds()
        refused = [await h.call(102, [2, "BCH", "deposit", 4, "7", {}]),
                   await h.call(101, [2, "BCH"])]
        self.assertLess(reactor.seconds() - started, 1.0)
        self.assertEqual([reply["error"] for reply in refused],
                         [{"code": 3, "message": "service unavailable"}] * 2)
        locker.cursor().execute("UNLOCK TABLES")
        self.assertEqual((await held)["result"], {"status": "success"})
        self.assertFalse(h.service.operlog.stalled)
        reply = await h.call(101, [2, "BCH"])
        self.assertEqual(reply["result"]["BCH"]["available"], "100005")
        await h.stop()
        self.flushLoggedErrors()

    def test_a_stalled_log_refuses_requests(self):
        """While an operation-log commit waits (a lock on its table), requests are refused
        with service unavailable, writes unapplied; once it is done they are served."""
        return defer.Deferred.fromCoroutine(self.stalled_log())

    def test_mysql_then_kafka_outage(self):
        """Writes wait through a MySQL outage (one past the queue limit is refused at once),
        then commit in order; through a broker outage they are answered and their messages
        arrive later, all of them, in order; a restart rebuilds the same state."""
        return defer.Deferred.fromCoroutine(self.outages())

