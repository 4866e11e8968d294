# -*- test-case-name: utils.test.test_kafka_queue -*-
"""Kafka producer and consumer services against a real broker, and the in-process bus."""

import os
import time
import uuid

from twisted.internet import defer, reactor, threads
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from utils import testing
from utils.kafka_queue import (CONSUMER_STOP_WAIT, InProcessBus, KafkaConsumerService,
                               KafkaProducerService, QueueFull)
from utils.kafka_wire import LeanProducer
from utils.testing import until


def topic_name():
    return "test-" + uuid.uuid4().hex[:12]


class BrokerTests(TestCase):

    timeout = 120

    def setUp(self):
        self.brokers = testing.require("kafka")

    def producer(self, brokers=None, **kw):
        p = KafkaProducerService(brokers or self.brokers, **kw)
        p.startService()
        self.addCleanup(lambda: p.stopService() if p.running else None)
        return p

    def consumer(self, topic, got, brokers=None, **kw):
        c = KafkaConsumerService(brokers or self.brokers, topic,
                                 lambda offset, value: got.append((offset, value)), **kw)
        c.startService()
        self.addCleanup(lambda: c.stopService() if c.running else None)
        return c

    async def order_scenario(self):
        topic = topic_name()
        p = self.producer()
        for i in range(10000):
            p.send(topic, b"m%d" % i)
        await until(lambda: p.delivered == 10000, what="10000 deliveries")
        self.assertEqual((p.queued, p.failed), (0, 0))
        got = []
        self.consumer(topic, got, offset="earliest", limit=500)
        await until(lambda: len(got) == 10000, what="10000 messages consumed")
        self.assertEqual(got, [(i, b"m%d" % i) for i in range(10000)])

    def test_ten_thousand_in_order(self):
        """10,000 messages produced through the service are consumed back in order."""
        return defer.Deferred.fromCoroutine(self.order_scenario())

    async def offsets_scenario(self):
        topic = topic_name()
        p = self.producer()
        for i in range(10):
            p.send(topic, "s%d" % i)
        await until(lambda: p.delivered == 10)
        from_five, latest = [], []
        self.consumer(topic, from_five, offset=5)
        c = self.consumer(topic, latest, offset="latest")
        await until(lambda: len(from_five) == 5)
        await until(lambda: c.broker_up)
        await deferLater(reactor, 0.5, lambda: None)
        p.send(topic, "new")
        await until(lambda: len(latest) == 1 and len(from_five) == 6)
        self.assertEqual(from_five[0], (5, b"s5"))
        self.assertEqual(latest, [(10, b"new")])

    async def latest_scenario(self):
        topic = topic_name()
        # a producer whose clock is a minute behind this host's: batches of several
        # records, the last one's end reported by some brokers as its base offset + 1
        behind = LeanProducer(self.brokers, clock=lambda: time.time() - 60)
        self.addCleanup(behind.close)
        await threads.deferToThread(behind.send, [(topic, b"old%d" % i) for i in range(5)])
        await threads.deferToThread(behind.send, [(topic, b"last%d" % i) for i in range(3)])
        got = []
        c = self.consumer(topic, got, offset="latest")
        await until(lambda: c.start_offset is not None, what="the end found")
        self.assertEqual(c.start_offset, 8)
        await threads.deferToThread(behind.send, [(topic, b"new%d" % i) for i in range(3)])
        await until(lambda: len(got) == 3, what="the new messages")
        self.assertEqual(got, [(8 + i, b"new%d" % i) for i in range(3)])

    def test_latest_whatever_the_clocks(self):
        """A consumer from the end skips the records of the partition's last batch, though
        the broker reports its end at the batch's base, and takes every later one, however
        far behind the producer's clock is (records are told apart by offset alone)."""
        return defer.Deferred.fromCoroutine(self.latest_scenario())

    def test_explicit_and_latest_offsets(self):
        """A consumer starts at a given offset, or sees only new messages with 'latest'."""
        return defer.Deferred.fromCoroutine(self.offsets_scenario())

    async def outage_scenario(self):
        # the client reaches the broker through a proxy that the test cuts: to the producer
        # the broker is gone (connections dropped, then refused) while it keeps its log
        proxy = testing.CuttableProxy(testing.free_port())
        broker = testing.KafkaBroker(port=proxy.target_port, advertise_port=proxy.port).start()
        self.addCleanup(broker.stop)
        proxy.up()
        self.addCleanup(proxy.down)
        topic = topic_name()
        p = self.producer(broker.address, request_timeout_ms=2000)
        acked = []
        for i in range(100):
            p.send(topic, b"a%d" % i, callback=lambda err, i=i: acked.append((i, err)))
        await until(lambda: p.delivered == 100)
        await proxy.down()
        for i in range(100, 300):
            p.send(topic, b"a%d" % i, callback=lambda err, i=i: acked.append((i, err)))
        await deferLater(reactor, 3.0, lambda: None)
        self.assertEqual(p.queued, 200)
        self.assertEqual((p.topic_queue_length(topic), p.topic_queue_length("other")), (200, 0))
        self.assertEqual(p.failed, 0)
        self.assertFalse(p.broker_up)
        proxy.up()
        await until(lambda: p.queued == 0, seconds=60, what="queue drained after restart")
        self.assertEqual(p.topic_queue_length(topic), 0)
        self.assertEqual(p.failed, 0)
        self.assertEqual([i for i, err in acked], list(range(300)))
        self.assertTrue(all(err is None for _, err in acked))
        got = []
        self.consumer(topic, got, brokers=broker.address, offset="earliest")
        await until(lambda: len(got) >= 300, seconds=30, what="all messages consumed")
        self.assertEqual(got, [(i, b"a%d" % i) for i in range(300)])
        self.flushLoggedErrors()

    def test_broker_restart_loses_nothing(self):
        """Messages sent while the broker is unreachable wait, then all arrive in order."""
        return defer.Deferred.fromCoroutine(self.outage_scenario())

    def test_queue_limit(self):
        """Past queue_limit undelivered messages, send raises QueueFull; the queue is
        counted in all and by topic."""
        p = KafkaProducerService("127.0.0.1:%d" % testing.free_port(), queue_limit=3)
        for topic in ("t", "u", "t"):
            p.send(topic, b"x")
        self.assertRaises(QueueFull, p.send, "t", b"x")
        self.assertEqual(p.queue_length, 3)
        self.assertEqual([p.topic_queue_length(t) for t in "tuv"], [2, 1, 0])

    async def flush_scenario(self):
        topic = topic_name()
        p = KafkaProducerService(self.brokers)
        p.startService()
        for i in range(500):
            p.send(topic, b"f%d" % i)
        await p.stopService()
        self.assertEqual((p.delivered, p.queued), (500, 0))

    def test_stop_flushes(self):
        """stopService delivers what is queued before it fires."""
        return defer.Deferred.fromCoroutine(self.flush_scenario())

    async def recreated_scenario(self):
        # a position past the end of the partition, as a stored offset is after the topic
        # was recreated (a broker keeping its topics in memory restarted)
        topic = topic_name()
        producer = LeanProducer(self.brokers)
        self.addCleanup(producer.close)
        producer.send([(topic, b"new %d" % i) for i in range(5)])
        got = []
        with capturedLogs() as events:
            self.consumer(topic, got, offset=30)
            await until(lambda: len(got) >= 5, seconds=30, what="the messages")
            await deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(got, [(i, b"new %d" % i) for i in range(5)])
        self.assertTrue(any("offset 30 is past the end of %s (5)" % topic in formatEvent(e)
                            for e in events if e["log_level"] == LogLevel.error))

    def test_topic_recreated(self):
        """A consumer whose position is past the end of its partition (the topic recreated)
        says so and reads it again from the start, where it waited without a word and then
        skipped what came before its old position."""
        return defer.Deferred.fromCoroutine(self.recreated_scenario())

    async def missing_partition_scenario(self):
        topic = topic_name()
        p = self.producer()
        p.send(topic, b"one")
        await until(lambda: p.delivered == 1, what="the topic made")
        with capturedLogs() as events:
            self.consumer(topic, [], partition=7, name="deals consumer")
            await until(lambda: any(e["log_level"] == LogLevel.error for e in events),
                        what="the error")
        errors = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
        self.assertRegex(errors[0], r"^deals consumer: %s has no partition 7 \(it has 0(, "
                                    r"\d)*\): nothing is read until it has$" % topic)

    def test_missing_partition(self):
        """A consumer of a partition its topic does not have says so, where it read
        nothing without a word."""
        return defer.Deferred.fromCoroutine(self.missing_partition_scenario())

    async def stop_while_down_scenario(self):
        broker = testing.KafkaBroker().start()
        self.addCleanup(broker.stop)
        p = self.producer(broker.address, stop_timeout=2.0)
        p.send(topic_name(), b"one")
        await until(lambda: p.delivered == 1)
        broker.stop()
        p.send(topic_name(), b"two")        # a topic whose metadata it never had
        await deferLater(reactor, 2.0, lambda: None)
        started = reactor.seconds()
        await p.stopService()
        self.assertLess(reactor.seconds() - started, 5.0)
        self.assertEqual((p.delivered, p.queued), (1, 1))
        self.flushLoggedErrors()

    def test_stops_while_the_broker_is_down(self):
        """A producer stops within its stop timeout while the broker is down and its next
        message is for a topic it has no metadata of (each try times out), what is left
        counted."""
        return defer.Deferred.fromCoroutine(self.stop_while_down_scenario())

    async def unreachable_stop_scenario(self):
        c = KafkaConsumerService("127.0.0.1:%d" % testing.free_port(), topic_name(),
                                 lambda offset, value: None, reactor=reactor)
        c.startService()
        await deferLater(reactor, 0.5, lambda: None)     # its thread is bootstrapping now
        started = reactor.seconds()
        await c.stopService()
        self.assertLess(reactor.seconds() - started, CONSUMER_STOP_WAIT + 1)

    def test_consumer_stops_while_broker_unreachable(self):
        """A consumer still waiting for an unreachable broker stops within
        CONSUMER_STOP_WAIT, not after kafka-python's 30 s bootstrap timeout."""
        return defer.Deferred.fromCoroutine(self.unreachable_stop_scenario())


class PastEndTests(SynchronousTestCase):

    def test_where_a_consumer_reads_again(self):
        """Past the end of its partition, a consumer of a stored offset reads it again from
        the start; one of what is produced from now on (accessws's) from the end."""
        class Consumer:
            def __init__(self):
                self.seeks = []

            def highwater(self, tp):
                return 5

            def position(self, tp, timeout_ms=None):
                return 30

            def seek_to_beginning(self, tp):
                self.seeks.append("start")

            def seek_to_end(self, tp):
                self.seeks.append("end")

        class Reactor:
            def callFromThread(self, f, *args, **kwargs):
                f(*args, **kwargs)

        for offset, where in ((30, "start"), ("latest", "end")):
            service = KafkaConsumerService("127.0.0.1:1", "t", lambda o, v: None,
                                           offset=offset, reactor=Reactor())
            service._tp = "tp"
            consumer = Consumer()
            with capturedLogs():
                service._past_end(consumer)
            self.assertEqual(consumer.seeks, [where])


class BusTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.bus = InProcessBus(reactor=self.clock)

    def test_produce_consume(self):
        """Messages reach consumers on a later turn, in order, with offsets."""
        producer = self.bus.producer()
        got, done = [], []
        consumer = self.bus.consumer("deals", lambda o, v: got.append((o, v)), offset="earliest")
        consumer.startService()
        producer.send("deals", "a", callback=done.append)
        producer.send("deals", b"b")
        self.assertEqual(got, [])
        self.clock.advance(0)
        self.assertEqual(got, [(0, b"a"), (1, b"b")])
        self.assertEqual(done, [None])

    def test_offsets(self):
        """A consumer starts at an explicit offset or at the end ('latest')."""
        producer = self.bus.producer()
        for v in "abc":
            producer.send("t", v)
        at_one, latest = [], []
        self.bus.consumer("t", lambda o, v: at_one.append(o), offset=1).startService()
        self.bus.consumer("t", lambda o, v: latest.append(o)).startService()
        self.clock.advance(0)
        producer.send("t", "d")
        self.clock.advance(0)
        self.assertEqual((at_one, latest), ([1, 2, 3], [3]))

    def test_limit_batches(self):
        """A consumer takes at most `limit` messages per turn."""
        producer = self.bus.producer()
        for i in range(5):
            producer.send("t", str(i))
        got = []
        consumer = self.bus.consumer("t", lambda o, v: got.append(o), offset=0, limit=2)
        turns = []
        deliver = consumer._deliver
        consumer._deliver = lambda: (turns.append(len(got)), deliver())
        consumer.startService()
        self.clock.advance(0)
        self.assertEqual(got, [0, 1, 2, 3, 4])
        self.assertEqual(turns, [0, 2, 4])

    def test_stopped_consumer(self):
        """A stopped consumer receives nothing more."""
        got = []
        consumer = self.bus.consumer("t", lambda o, v: got.append(o), offset=0)
        consumer.startService()
        consumer.stopService()
        self.bus.producer().send("t", "x")
        self.clock.advance(0)
        self.assertEqual(got, [])

    def test_handler_error_logged(self):
        """A failing handler is logged and later messages still arrive."""
        got = []

        def handler(offset, value):
            if offset == 0:
                raise ValueError("bad")
            got.append(offset)
        self.bus.consumer("t", handler, offset=0).startService()
        self.bus.producer().send("t", "x")
        self.bus.producer().send("t", "y")
        self.clock.advance(0)
        self.assertEqual(got, [1])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_kept_in_files(self):
        """With a path, topics survive a restart; a torn last line and the retention apply."""
        path = self.mktemp()
        bus = InProcessBus(reactor=self.clock, path=path, retention=3)
        producer = bus.producer()
        for v in ["a", "b\nc", "é", '{"x": 1}']:
            producer.send("t", v)
        bus.close()
        with open(os.path.join(path, "t.log"), "ab") as f:
            f.write(b'"half')                     # a crash in the middle of a write
        again = InProcessBus(reactor=self.clock, path=path, retention=3)
        self.assertEqual(again.end_offset("t"), 4)
        got = []
        again.consumer("t", lambda o, v: got.append((o, v)), offset=0).startService()
        again.producer().send("t", "e")
        self.clock.advance(0)
        # retention 3: offset 0 went at load, offset 1 when "e" arrived
        self.assertEqual(got, [(2, "é".encode()), (3, b'{"x": 1}'), (4, b"e")])
        again.close()
        third = InProcessBus(reactor=self.clock, path=path, retention=10)
        self.assertEqual(third.read("t", 0, 10)[0], (1, b"b\nc"))
        self.assertEqual(third.end_offset("t"), 5)
        third.close()
