# -*- test-case-name: utils.test.test_kafka_queue -*-
"""Kafka producer and consumer services against a real broker, and the in-process bus."""

import collections
import os
import signal
import time
import uuid

from kafka.errors import KafkaTimeoutError
from twisted.internet import defer, reactor, threads
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from utils import testing
from utils.kafka_queue import (CONSUMER_STOP_WAIT, InProcessBus, KafkaConsumerService,
                               KafkaProducerService, QueueFull, record_digest)
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

    async def resume_scenario(self):
        topic = topic_name()
        producer = LeanProducer(self.brokers)
        self.addCleanup(producer.close)
        producer.send([(topic, b"deal %d" % i) for i in range(6)])
        intact, other = [], []
        with capturedLogs() as events:
            self.consumer(topic, intact, offset=4, last_digest=record_digest(b"deal 3"))
            # an earlier run's last record, as a topic recreated since holds another there
            self.consumer(topic, other, offset=4, last_digest=record_digest(b"gone 3"))
            await until(lambda: len(intact) >= 2 and len(other) >= 6, seconds=30,
                        what="the messages")
            await deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(intact, [(4, b"deal 4"), (5, b"deal 5")])
        self.assertEqual(other, [(i, b"deal %d" % i) for i in range(6)])
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("another record is at offset 3; the topic was recreated", warnings[0])
        # a topic ending right before the earlier run's last record: read from its start at
        # once, not when a record comes to that offset
        short = []
        with capturedLogs() as events:
            self.consumer(topic, short, offset=7, last_digest=record_digest(b"deal 6"))
            await until(lambda: len(short) >= 6, seconds=30, what="the short topic read")
        self.assertEqual(short, [(i, b"deal %d" % i) for i in range(6)])
        self.assertTrue(any("the partition ends at 6, before offset 6" in formatEvent(e)
                            for e in events if e["log_level"] == LogLevel.warn))

    def test_resume_checks_the_last_record(self):
        """A consumer resuming after a record an earlier run handled, known by its digest,
        finds it and goes on after it; another record at its offset (the topic recreated
        between the runs, holding more records than were read), or none where the topic
        ends, is said as a warning and the topic is read again from its start, where it
        skipped that many of its records or waited for the next."""
        return defer.Deferred.fromCoroutine(self.resume_scenario())

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


class OutageTests(TestCase):
    """A consumer whose private broker goes away and comes back: with its topics (a network
    cut, a paused broker) or without (a broker keeping them in memory restarted)."""

    timeout = 120

    def setUp(self):
        testing.require("kafka")
        self.topic = topic_name()
        self.got = []

    def consumer(self, brokers):
        c = KafkaConsumerService(brokers, self.topic,
                                 lambda offset, value: self.got.append((offset, value)),
                                 offset=0, name="test consumer")
        c.startService()
        self.addCleanup(lambda: c.stopService() if c.running else None)
        return c

    def produce(self, brokers, values):
        producer = LeanProducer(brokers)
        try:
            producer.send([(self.topic, v) for v in values])
        finally:
            producer.close()

    @staticmethod
    def logged(events, level, text):
        return [formatEvent(e) for e in events
                if e["log_level"] == level and text in formatEvent(e)]

    async def away_and_back(self, broker, away, back):
        """Five records read, the broker `away()` then, once the consumer has said so and
        a few seconds more, `back()`; then three records more.  Returns the log."""
        await threads.deferToThread(self.produce, broker.address,
                                    [b"a%d" % i for i in range(5)])
        with capturedLogs() as events:
            self.consumer(broker.address)
            await until(lambda: len(self.got) == 5, what="the first records")
            await away()
            await until(lambda: self.logged(events, LogLevel.error, "unavailable"),
                        seconds=20, what="the broker found unreachable")
            await deferLater(reactor, 5.0, lambda: None)
            await back()
            await until(lambda: self.logged(events, LogLevel.warn, "working again"),
                        seconds=30, what="the broker found back")
            await threads.deferToThread(self.produce, broker.address,
                                        [b"b%d" % i for i in range(3)])
            await until(lambda: len(self.got) >= 8, seconds=30, what="the new records")
            await deferLater(reactor, 1.0, lambda: None)
        self.flushLoggedErrors()
        self.assertEqual(self.got, [(i, b"a%d" % i) for i in range(5)]
                         + [(5 + i, b"b%d" % i) for i in range(3)])
        return events

    def assert_told(self, events, broker):
        # this test's consumer's: a consumer of an earlier test may still be ending
        errors = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error
                  and formatEvent(e).startswith("test consumer:")]
        self.assertEqual(len(errors), 1, errors)
        self.assertTrue(errors[0].startswith(
            "test consumer: broker %s unavailable: no answer in 2 s" % broker.address),
            errors[0])
        self.assertEqual(len(self.logged(events, LogLevel.warn, "test consumer: working "
                                                                "again after ")), 1)
        self.assertEqual(self.logged(events, LogLevel.warn, "recreated"), [])

    async def cut_scenario(self):
        proxy = testing.CuttableProxy(testing.free_port())
        broker = testing.KafkaBroker(port=proxy.target_port, advertise_port=proxy.port).start()
        self.addCleanup(broker.stop)
        proxy.up()
        self.addCleanup(proxy.down)

        async def back():
            proxy.up()
        events = await self.away_and_back(broker, proxy.down, back)
        self.assert_told(events, broker)

    def test_cut_broker_told(self):
        """A broker cut off (connections dropped, then refused) is told as an outage, an
        error naming it, where nothing was said however long it lasted, and its return (a
        warning); it kept the topic, which is not read again."""
        return defer.Deferred.fromCoroutine(self.cut_scenario())

    async def paused_scenario(self):
        broker = testing.KafkaBroker().start()
        self.addCleanup(broker.stop)
        self.addCleanup(lambda: broker.proc and broker.proc.send_signal(signal.SIGCONT))

        async def pause():
            broker.proc.send_signal(signal.SIGSTOP)

        async def resume():
            broker.proc.send_signal(signal.SIGCONT)
        events = await self.away_and_back(broker, pause, resume)
        self.assert_told(events, broker)

    def test_paused_broker_told(self):
        """A broker that stops answering with its connections open (paused) is told as
        one that refuses them, and its topic is not read again when it answers again."""
        return defer.Deferred.fromCoroutine(self.paused_scenario())

    async def restart_scenario(self):
        broker = testing.KafkaBroker().start()
        self.addCleanup(broker.stop)
        await threads.deferToThread(self.produce, broker.address,
                                    [b"a%d" % i for i in range(5)])
        with capturedLogs() as events:
            self.consumer(broker.address)
            await until(lambda: len(self.got) == 5, what="the first records")
            await threads.deferToThread(broker.stop)
            await threads.deferToThread(broker.start)
            # the producer's records of the outage, more than the consumer had read
            await threads.deferToThread(self.produce, broker.address,
                                        [b"n%d" % i for i in range(8)])
            await until(lambda: len(self.got) >= 13, seconds=30, what="the new topic")
            await deferLater(reactor, 1.0, lambda: None)
        self.flushLoggedErrors()
        self.assertEqual(self.got, [(i, b"a%d" % i) for i in range(5)]
                         + [(i, b"n%d" % i) for i in range(8)])
        warnings = self.logged(events, LogLevel.warn, "recreated")
        self.assertEqual(len(warnings), 1, warnings)
        self.assertTrue(warnings[0].startswith(
            "test consumer: %s[0] is not the one read so far: another record is at offset 4"
            % self.topic), warnings[0])

    def test_restarted_broker_topic_read_again(self):
        """A broker that restarted without its topics, the topic made again with more
        records than the consumer had read, is read again from the start (warning), where
        the consumer went on from its old position and skipped the first records."""
        return defer.Deferred.fromCoroutine(self.restart_scenario())


class PastEndTests(SynchronousTestCase):

    def test_where_a_consumer_reads_again(self):
        """Past the end of its partition (seen at two empty polls in a row), a consumer of a
        stored offset reads it again from the start; one of what is produced from now on
        (accessws's) from the end."""
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
                # at the second empty poll in a row that finds it past the end
                service._past_end(consumer)
                self.assertEqual(consumer.seeks, [])
                service._past_end(consumer)
            self.assertEqual(consumer.seeks, [where])

    def test_end_lagging_once(self):
        """A position past the end seen once (a new leader's end lagging for a moment),
        then within it, is not read again."""
        ends = [5, 40, 5]

        class Consumer:
            def __init__(self):
                self.seeks = []

            def highwater(self, tp):
                return ends.pop(0)

            def position(self, tp, timeout_ms=None):
                return 30

            def seek_to_beginning(self, tp):
                self.seeks.append("start")

        service = KafkaConsumerService("127.0.0.1:1", "t", lambda o, v: None, offset=30)
        service._tp = "tp"
        consumer = Consumer()
        for _ in range(3):
            service._past_end(consumer)
        self.assertEqual(consumer.seeks, [])


class Record(collections.namedtuple("Record", "offset timestamp value")):
    """What the consumer service reads of kafka-python's ConsumerRecord."""


class Partition:
    """kafka-python's consumer of one partition held in a list, on a clock of its own.

    Each poll takes 0.2 s and first runs the next step of the test's script, if any; it
    returns what lies at the position unless the broker is `down`.  A request for the end
    while it is down takes its whole timeout and fails.  Seeks are recorded in `calls`.
    A position past the end waits there (as some brokers answer it); with `resets`, one
    outside the partition (past its end, before its `start`) goes to the start, as Kafka's
    OFFSET_OUT_OF_RANGE has kafka-python do.
    """

    def __init__(self, values):
        self.now = 0.0
        self.calls = []
        self.probes = 0
        self.down = False
        self.at = 0
        self.steps = []
        self.records = []
        self.start = 0
        self.resets = False
        self.fill(values)

    def fill(self, values, first=0):
        """The partition holds `values` from offset `first` on (the records before kept)."""
        del self.records[first:]
        self.records.extend(Record(first + i, 1000 + first + i, v.encode())
                            for i, v in enumerate(values))

    def poll(self, timeout_ms, max_records):
        self.now += 0.2
        if self.steps:
            self.steps.pop(0)(self)
        if self.resets and not self.start <= self.at <= len(self.records):
            self.at = self.start
        if self.down or self.at >= len(self.records):
            return {}
        batch = self.records[self.at:self.at + max_records]
        self.at += len(batch)
        return {"tp": batch}

    def highwater(self, tp):
        return len(self.records)

    def position(self, tp, timeout_ms=None):
        return self.at

    def end_offsets(self, tps, timeout_ms):
        self.probes += 1
        if self.down:
            self.now += timeout_ms / 1000.0
            raise KafkaTimeoutError("no answer")
        return {tp: len(self.records) for tp in tps}

    def seek(self, tp, offset):
        self.calls.append(("seek", offset))
        self.at = offset

    def seek_to_beginning(self, tp):
        self.calls.append(("seek_to_beginning",))
        self.at = self.start

    def seek_to_end(self, tp):
        self.calls.append(("seek_to_end",))
        self.at = len(self.records)

    def close(self):
        self.calls.append(("close",))


class SameThread:
    """A reactor that runs what a thread hands it at once, with the partition's clock."""

    def __init__(self, partition):
        self.partition = partition

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def seconds(self):
        return self.partition.now


class ConsumerLoopTests(SynchronousTestCase):
    """The reading thread's loop, run in the test's thread against a Partition."""

    def setUp(self):
        self.partition = Partition(["a%d" % i for i in range(5)])
        self.got = []

    def run_consumer(self, polls, offset=0, last_digest=None):
        """Run the loop over `polls` polls (the partition's script runs first); returns
        the log events of info level and above, as (level, text)."""
        partition = self.partition
        partition.steps.extend([lambda p: None] * (polls - len(partition.steps)))
        service = KafkaConsumerService("127.0.0.1:9092", "deals",
                                       lambda offset, value: self.got.append((offset, value)),
                                       offset=offset, reactor=SameThread(partition),
                                       name="deals consumer", last_digest=last_digest)
        service._tp = "tp"
        service._skip_before = None
        service._clock = lambda: partition.now
        service._stopped = defer.Deferred()

        def opened():
            service.reactor.callFromThread(service._broker_state, True)
            if last_digest is not None:
                service._seek_start(partition, "tp")
            else:
                partition.at = 0 if offset == "latest" else offset
            return partition
        service._open = opened
        partition.steps.append(lambda p: service._stopping.set())
        with capturedLogs() as events:
            service._run()
        return [(e["log_level"], formatEvent(e)) for e in events
                if e["log_level"] >= LogLevel.info]

    def script(self, *steps):
        """Steps given as (polls, function): the function runs before the first of them."""
        for polls, step in steps:
            self.partition.steps.append(step)
            self.partition.steps.extend([lambda p: None] * (polls - 1))

    @staticmethod
    def down(partition):
        partition.down = True

    @staticmethod
    def up(partition):
        partition.down = False

    def test_unreachable_broker_logged_once(self):
        """A broker that stops answering is told as an outage (where nothing was said): an
        error naming it, an alert once it has lasted 10 s, and a warning when it answers."""
        self.script((10, lambda p: None), (150, self.down), (10, self.up))
        logged = self.run_consumer(170)
        self.assertEqual([level for level, text in logged],
                         [LogLevel.info, LogLevel.error, LogLevel.critical, LogLevel.warn])
        self.assertEqual(logged[1][1],
                         "deals consumer: broker 127.0.0.1:9092 unavailable: no answer in 2 s "
                         "to a request for the end of deals[0] (KafkaTimeoutError); reading "
                         "deals[0] waits for it")
        self.assertRegex(logged[2][1], r"^deals consumer: failing for 1\d s, \d+ attempts: "
                                       r"broker 127.0.0.1:9092 unavailable: ")
        self.assertRegex(logged[3][1], r"^deals consumer: working again after [0-9.]+ s, "
                                       r"\d+ failed attempts$")
        self.assertEqual(self.got, [(i, b"a%d" % i) for i in range(5)])

    def test_quiet_topic_probed(self):
        """On a quiet topic whose broker answers, the broker is asked for the partition's
        end every PROBE_AFTER seconds and nothing is logged."""
        logged = self.run_consumer(100)            # 20 s
        self.assertEqual([level for level, text in logged], [LogLevel.info])
        self.assertIn(self.partition.probes, (9, 10))

    def test_recreated_topic_read_again(self):
        """A topic recreated while its broker was away, holding more records than were read
        before, is found out by the record at the last offset read, logged as a warning and
        read again from its start, where the consumer went on from its old position and
        skipped its first records."""
        self.script((10, lambda p: None), (20, self.down),
                    (10, lambda p: (self.up(p), p.fill(["n%d" % i for i in range(8)]))))
        logged = self.run_consumer(40)
        self.assertEqual(self.got, [(i, b"a%d" % i) for i in range(5)]
                         + [(i, b"n%d" % i) for i in range(8)])
        warnings = [text for level, text in logged if level == LogLevel.warn
                    and "working again" not in text]
        self.assertEqual(warnings, [
            "deals consumer: deals[0] is not the one read so far: another record is at offset "
            "4; the topic was recreated (its broker restarted without its data), reading it "
            "again from its start"])
        self.assertEqual(self.partition.calls, [("seek", 4), ("seek_to_beginning",),
                                                ("close",)])

    def test_intact_topic_goes_on(self):
        """A broker back with the topic as it was (a pause, a cut network) is not read
        again: the record at the last offset read is found again, and what follows it is
        handed over once."""
        self.script((10, lambda p: None), (20, self.down),
                    (10, lambda p: (self.up(p), p.fill(["b%d" % i for i in range(3)], 5))))
        logged = self.run_consumer(40)
        self.assertEqual(self.got, [(i, b"a%d" % i) for i in range(5)]
                         + [(5 + i, b"b%d" % i) for i in range(3)])
        self.assertEqual([level for level, text in logged],
                         [LogLevel.info, LogLevel.error, LogLevel.warn])
        self.assertEqual(self.partition.calls, [("seek", 4), ("close",)])

    def test_position_reset_before_the_last_record(self):
        """A recreated topic that ends before the last record read, whose broker answers
        OFFSET_OUT_OF_RANGE (Kafka), has kafka-python reset the position to its start by
        itself: the check finds the last record gone, says so and reads it from its start."""
        def recreate(partition):
            partition.resets = True
            partition.records[:] = []
            partition.fill(["n%d" % i for i in range(3)])
        self.script((10, lambda p: None), (1, recreate))
        logged = self.run_consumer(20)
        self.assertEqual(self.got, [(i, b"a%d" % i) for i in range(5)]
                         + [(i, b"n%d" % i) for i in range(3)])
        self.assertEqual(
            [text for level, text in logged if level == LogLevel.warn],
            ["deals consumer: deals[0] is not the one read so far: offset 4 is gone (the "
             "partition starts again at 0); the topic was recreated (its broker restarted "
             "without its data), reading it again from its start"])
        self.assertEqual(self.partition.calls, [("seek", 4), ("seek_to_beginning",),
                                                ("close",)])

    def test_last_record_past_retention(self):
        """The last record read gone with those after it kept (retention moved the start
        of the partition past it) is no recreation: what follows is handed over once."""
        def expire(partition):
            partition.resets = True
            partition.start = 5
            partition.fill(["b%d" % i for i in range(3)], 5)
        self.script((10, lambda p: None), (1, expire))
        logged = self.run_consumer(20)
        self.assertEqual(self.got, [(i, b"a%d" % i) for i in range(5)]
                         + [(5 + i, b"b%d" % i) for i in range(3)])
        self.assertEqual([level for level, text in logged], [LogLevel.info])
        self.assertEqual(self.partition.calls, [("seek", 4), ("close",)])

    def test_check_after_a_pause(self):
        """Records that come after CHECK_AFTER seconds without any are read again from the
        last record handed over, which catches a recreation too short to be seen as a lost
        broker; a record with the same value but another timestamp is another record."""
        def recreate(partition):
            partition.records[:] = [Record(i, 5000 + i, b"a%d" % i) for i in range(7)]
        self.script((10, lambda p: None), (3, recreate))
        logged = self.run_consumer(20)
        self.assertEqual(self.got, [(i, b"a%d" % i) for i in range(5)]
                         + [(i, b"a%d" % i) for i in range(7)])
        self.assertEqual([level for level, text in logged], [LogLevel.info, LogLevel.warn])

    def test_no_check_while_records_flow(self):
        """Records that follow one another without a pause are handed over as they come,
        with no extra request: the check costs nothing while the consumer is busy."""
        self.script(*[(1, lambda p, i=i: p.fill(["c%d" % i], 5 + i)) for i in range(20)])
        self.run_consumer(25)
        self.assertEqual(len(self.got), 25)
        self.assertEqual(self.partition.calls, [("close",)])
        self.assertEqual(self.partition.probes, 0)

    def test_resume_after_the_last_record(self):
        """A consumer resuming after an earlier run's last record, known by its digest,
        reads it first to check it and hands over only what follows it."""
        logged = self.run_consumer(10, offset=3, last_digest=record_digest(b"a2"))
        self.assertEqual(self.got, [(3, b"a3"), (4, b"a4")])
        self.assertEqual([level for level, text in logged], [LogLevel.info])
        self.assertEqual(self.partition.calls, [("seek", 2), ("close",)])

    def test_resume_in_a_recreated_topic(self):
        """Another record where the earlier run's last one was (the topic recreated
        between the runs) is said as a warning, and the topic read from its start."""
        self.partition.records[:] = []
        self.partition.fill(["n%d" % i for i in range(7)])
        logged = self.run_consumer(10, offset=3, last_digest=record_digest(b"a2"))
        self.assertEqual(self.got, [(i, b"n%d" % i) for i in range(7)])
        self.assertEqual([text for level, text in logged if level == LogLevel.warn], [
            "deals consumer: deals[0] is not the one read so far: another record is at offset "
            "2; the topic was recreated (its broker restarted without its data), reading it "
            "again from its start"])
        self.assertEqual(self.partition.calls, [("seek", 2), ("seek_to_beginning",),
                                                ("close",)])

    def test_partition_end_lagging_once(self):
        """An end before the record to check seen once (a new leader's end lagging for a
        moment) is no recreation when the record is there at the next poll."""
        self.partition.records[:] = []
        self.partition.fill(["a0", "a1"])
        self.script((1, lambda p: None), (4, lambda p: p.fill(["a2", "a3"], 2)))
        logged = self.run_consumer(5, offset=3, last_digest=record_digest(b"a2"))
        self.assertEqual(self.got, [(3, b"a3")])
        self.assertEqual([level for level, text in logged], [LogLevel.info])

    def test_resume_after_a_record_without_value(self):
        """An earlier run's last record without a value (a tombstone) is known by the digest
        of an empty one."""
        self.partition.records[2] = Record(2, 1002, None)
        logged = self.run_consumer(10, offset=3, last_digest=record_digest(None))
        self.assertEqual(self.got, [(3, b"a3"), (4, b"a4")])
        self.assertEqual([level for level, text in logged], [LogLevel.info])

    def test_resume_where_the_partition_ends(self):
        """A recreated topic that ends right before the earlier run's last record (where
        the consumer is not past its end) is found out at the second empty poll, and read
        from its start, where it waited for a record at that offset."""
        self.partition.records[:] = []
        self.partition.fill(["n0", "n1"])
        self.script((5, lambda p: None), (5, lambda p: p.fill(["n2", "n3"], 2)))
        logged = self.run_consumer(10, offset=3, last_digest=record_digest(b"a2"))
        self.assertEqual(self.got, [(i, b"n%d" % i) for i in range(4)])
        self.assertEqual([text for level, text in logged if level == LogLevel.warn], [
            "deals consumer: deals[0] is not the one read so far: the partition ends at 2, "
            "before offset 2; the topic was recreated (its broker restarted without its "
            "data), reading it again from its start"])
        # the records after a pause checked as ever: n1 first
        self.assertEqual(self.partition.calls, [("seek", 2), ("seek_to_beginning",),
                                                ("seek", 1), ("close",)])

    def test_recreated_topic_for_new_messages(self):
        """A consumer of only new messages (accessws's) goes to the end of a recreated
        topic, as it does when its position is past the end."""
        self.script((10, lambda p: None), (20, self.down),
                    (10, lambda p: (self.up(p), p.fill(["n%d" % i for i in range(8)]))))
        self.run_consumer(40, offset="latest")
        self.assertEqual(self.partition.calls, [("seek", 4), ("seek_to_end",), ("close",)])


class BusTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.bus = InProcessBus(reactor=self.clock)

    def test_resume_checks_the_last_record(self):
        """A consumer given the digest of the record before its offset goes on after it
        when the topic holds it (or lost it to retention), and reads the topic again from
        its start, with a warning, when another record is there or the topic ends before."""
        bus = InProcessBus(reactor=self.clock, retention=4)
        producer = bus.producer()
        for v in ("a", "b", "c", "d", "e"):
            producer.send("t", v)
        outcomes = []
        with capturedLogs() as events:
            for offset, last in ((3, b"c"), (3, b"x"), (1, b"a"), (9, b"i"), (3, None)):
                got = []
                bus.consumer("t", lambda o, v, got=got: got.append(o), offset=offset,
                             last_digest=last and record_digest(last)).startService()
                self.clock.advance(0)
                outcomes.append(got)
        self.assertEqual(outcomes, [[3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4],
                                    [3, 4]])
        self.assertEqual([formatEvent(e) for e in events if e["log_level"] == LogLevel.warn], [
            "bus consumer t: t is not the one read before: another record is at offset 2; it "
            "was recreated, reading it again from its start",
            "bus consumer t: t is not the one read before: it ends at 5; it was recreated, "
            "reading it again from its start"])

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

    def test_spoiled_file(self):
        """A topic's file with a line that is neither a message nor the header fails to load
        with an error naming the file and the line, whoever asks and however often."""
        path = self.mktemp()
        os.makedirs(path)
        for spoiled, line in ((b'"a"\nnot json\n', 2), (b'"a"\n42\n', 2),
                              (b'#first x\n"a"\n', 1)):
            with open(os.path.join(path, "t.log"), "wb") as f:
                f.write(spoiled)
            bus = InProcessBus(reactor=self.clock, path=path)
            # every time, not only the first: the topic is not taken as empty
            for ask in (lambda: bus.end_offset("t"), lambda: bus.read("t", 0, 10),
                        lambda: bus.producer().send("t", b"x")):
                error = self.assertRaises(ValueError, ask)
                self.assertIn("t.log, line %d: neither a message (a JSON string) nor the "
                              "#first header" % line, str(error))
