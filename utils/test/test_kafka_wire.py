# -*- test-case-name: utils.test.test_kafka_wire -*-
"""The lean producer: its record batches read by kafka-python, its groups sent to a real
broker and consumed back in order, through a broker that goes away and comes back."""

import socket
import struct
import threading
import time
import uuid

from kafka import KafkaConsumer, TopicPartition
from kafka.record.default_records import DefaultRecordBatch
from twisted.trial.unittest import SynchronousTestCase

from utils import testing
from utils.kafka_wire import (MAX_BATCH_BYTES, KafkaWireError, LeanProducer, chunks,
                               parse_address, record_batch)


def topic_name():
    return "wire-" + uuid.uuid4().hex[:12]


def consume(brokers, topic, count, patience=30.0):
    """The values of partition 0 of `topic`: at least `count` of them unless `patience`
    runs out first, and any that follow within half a second."""
    consumer = KafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    try:
        consumer.assign([TopicPartition(topic, 0)])
        got, deadline = [], time.monotonic() + patience
        while len(got) < count and time.monotonic() < deadline:
            for records in consumer.poll(500).values():
                got += [record.value for record in records]
        for records in consumer.poll(500).values():
            got += [record.value for record in records]
        return got
    finally:
        consumer.close()


class RecordBatchTests(SynchronousTestCase):

    def read(self, batch):
        reader = DefaultRecordBatch(batch)
        self.assertTrue(reader.validate_crc())
        self.assertEqual((reader.base_offset, reader.magic), (0, 2))
        return reader, list(reader)

    def test_read_back_by_kafka_python(self):
        """Values, offsets, time stamps and the CRC as kafka-python reads them."""
        values = [b"", b"a", b'{"event": 1}', bytes(range(256)) * 80]
        reader, records = self.read(record_batch(values, 1765000000123))
        self.assertEqual([r.value for r in records], values)
        self.assertEqual([r.offset for r in records], [0, 1, 2, 3])
        self.assertEqual({(r.key, r.timestamp, tuple(r.headers)) for r in records},
                         {(None, 1765000000123, ())})
        self.assertEqual(reader.last_offset_delta, 3)

    def test_offsets_beyond_the_short_varints(self):
        """Offset deltas past 2**14 (varints of three bytes and more)."""
        values = [b"%d" % i for i in range(40000)]
        _, records = self.read(record_batch(values, 0))
        self.assertEqual([r.value for r in records], values)
        self.assertEqual(records[-1].offset, 39999)

    def test_a_corrupted_batch_fails_its_crc(self):
        batch = bytearray(record_batch([b"abc"], 0))
        batch[-3] ^= 1
        self.assertFalse(DefaultRecordBatch(bytes(batch)).validate_crc())

    def test_chunks_stay_under_the_limit_in_order(self):
        values = [b"x" * (100 + i % 900) for i in range(5000)]
        runs = list(chunks(values))
        self.assertGreater(len(runs), 1)
        self.assertEqual([v for run in runs for v in run], values)
        for run in runs:
            self.assertLessEqual(len(record_batch(run, 0)), MAX_BATCH_BYTES)
        # a value above the limit goes alone
        big = [b"a", b"b" * (MAX_BATCH_BYTES + 1), b"c"]
        self.assertEqual(list(chunks(big)), [[b"a"], [big[1]], [b"c"]])

    def test_no_broker_address(self):
        self.assertRaises(ValueError, LeanProducer, " , ")

    def test_addresses(self):
        self.assertEqual(parse_address(" 127.0.0.1:19092"), ("127.0.0.1", 19092))
        self.assertEqual(parse_address("kafka1"), ("kafka1", 9092))
        self.assertEqual(parse_address("[::1]:9093"), ("::1", 9093))
        self.assertEqual(parse_address("::1"), ("::1", 9092))
        self.assertEqual(parse_address("[::1]"), ("::1", 9092))
        for bad in ("host:port", ":9092", "host:0", "host:70000", ""):
            self.assertRaises(ValueError, parse_address, bad)
        self.assertEqual(LeanProducer("a:1, b").bootstrap, [("a", 1), ("b", 9092)])


class BrokerTests(SynchronousTestCase):

    def setUp(self):
        self.brokers = testing.require("kafka")

    def test_groups_in_order_per_topic(self):
        """Two topics interleaved, groups of several batches each: every message arrives
        once, in order."""
        first, second = topic_name(), topic_name()
        said = []
        producer = LeanProducer(self.brokers, say=said.append)
        self.addCleanup(producer.close)
        sent = {first: [], second: []}
        for group in range(3):
            messages = []
            for i in range(6000):
                topic = first if i % 3 else second
                value = b'{"group": %d, "n": %d, "pad": "%s"}' % (group, i, b"p" * 300)
                messages.append((topic, value))
                sent[topic].append(value)
            producer.send(messages)
        self.assertEqual(producer.sent, 18000)
        self.assertEqual(said, [])      # new topics, created without a failed round
        for topic, values in sent.items():
            self.assertEqual(consume(self.brokers, topic, len(values)), values)

    def test_a_connection_closed_while_idle(self):
        """A connection the broker closed (as it does after a while idle) is replaced at
        once, without a failed round."""
        topic = topic_name()
        said = []
        producer = LeanProducer(self.brokers, say=said.append)
        self.addCleanup(producer.close)
        producer.send([(topic, b"one")])
        for conn in producer.connections.values():
            conn.sock.shutdown(socket.SHUT_RDWR)
        producer.send([(topic, b"two")])
        self.assertEqual(said, [])
        self.assertEqual(consume(self.brokers, topic, 2), [b"one", b"two"])

    def test_a_batch_too_large_is_sent_again_in_halves(self):
        """Batches over a broker's max.message.bytes (emulated here below the batches made)
        are sent again in halves, in order, down to single messages; a message too large by
        itself is reported and dropped, as the original drops it.  Requests ask for every
        in-sync replica's acknowledgement (acks=all)."""
        topic, said, limit = topic_name(), [], 4000
        producer = LeanProducer(self.brokers, retry_delay=0.01, say=said.append)
        self.addCleanup(producer.close)
        real = producer._produce

        def produce(node, body):
            # acknowledged by every in-sync replica
            self.assertEqual(struct.unpack_from(">h", body, 2)[0], -1)
            # one topic a request: its name, then its partition's batch
            size = struct.unpack_from(">h", body, 12)[0]
            name, at = body[14:14 + size], 14 + size + 12
            if len(body) - at <= limit:
                return real(node, body)
            return (struct.pack(">i", 1) + struct.pack(">h", len(name)) + name
                    + struct.pack(">iihqq", 1, 0, 10, -1, -1) + struct.pack(">i", 0))
        producer._produce = produce
        values = [b"m%04d" % i + b"." * 90 for i in range(300)]
        values[150] = b"x" * (limit + 1)
        producer.send([(topic, value) for value in values])
        self.assertEqual((producer.sent, producer.dropped), (299, 1))
        self.assertIn("kafka: 1 messages to %s refused (message too large): dropped" % topic,
                      said)
        self.assertIn("kafka: 300 messages to %s refused together (message too large): sent "
                      "again in halves" % topic, said)
        self.assertEqual(consume(self.brokers, topic, 299), values[:150] + values[151:])

    def test_a_timed_out_request_is_reported(self):
        """A request given up for a timeout is reported before it is sent again (the broker
        may hold it), not tried again at once as a connection closed while idle is."""
        topic, said = topic_name(), []
        producer = LeanProducer(self.brokers, retry_delay=0.01, say=said.append)
        self.addCleanup(producer.close)
        producer.send([(topic, b"one")])
        producer.send([(topic, b"two")])
        [conn] = producer.connections.values()
        self.assertGreater(conn.correlation, 1)     # not a new connection's first request
        call = conn.call

        def timing_out(*args):
            conn.call = call
            raise TimeoutError("timed out")
        conn.call = timing_out
        producer.send([(topic, b"three")])
        self.assertEqual(said[0], "kafka: send failed: timed out; retrying in 0.01 s")
        self.assertRegex(said[1], r"^kafka: working again after [0-9.]+ s, 1 failed attempts$")
        self.assertEqual(len(said), 2)
        self.assertEqual(consume(self.brokers, topic, 3), [b"one", b"two", b"three"])

    def test_a_lost_answer_is_reported(self):
        """A request whose answer is lost after it reached the broker (the connection
        lost) is reported and sent again after the delay, as after a timeout: the broker
        has appended it, and it arrives twice (at least once), never silently."""
        topic, said = topic_name(), []
        producer = LeanProducer(self.brokers, retry_delay=0.01, say=said.append)
        self.addCleanup(producer.close)
        producer.send([(topic, b"one")])
        [conn] = producer.connections.values()
        read = conn._read

        def losing(size):
            # the whole answer comes, and is lost with the connection
            conn._read = read
            read(struct.unpack(">i", read(size))[0])
            raise KafkaWireError("connection closed by the broker")
        conn._read = losing
        producer.send([(topic, b"two")])
        self.assertEqual(said[:1], ["kafka: send failed: connection closed by the broker; "
                                    "retrying in 0.01 s"])
        self.assertEqual([line.split(" after")[0] for line in said[1:]],
                         ["kafka: working again"])
        self.assertEqual(consume(self.brokers, topic, 3), [b"one", b"two", b"two"])

    def test_a_dead_bootstrap_address_is_passed_over(self):
        topic = topic_name()
        dead = "127.0.0.1:%d" % testing.free_port()
        producer = LeanProducer(dead + "," + self.brokers)
        self.addCleanup(producer.close)
        producer.send([(topic, b"one"), (topic, b"two")])
        self.assertEqual(consume(self.brokers, topic, 2), [b"one", b"two"])

    def test_waits_for_a_broker_that_comes_back(self):
        """Sent while the broker is down, a group is delivered once it is back, in order,
        with the failures reported meanwhile."""
        broker = testing.KafkaBroker().start()
        self.addCleanup(broker.stop)
        topic = topic_name()
        said = []
        producer = LeanProducer(broker.address, timeout=2.0, retry_delay=0.1,
                                say=said.append)
        self.addCleanup(producer.close)
        producer.send([(topic, b"before")])
        broker.stop()
        values = [b"after %d" % i for i in range(2000)]
        group = [(topic, value) for value in values]
        sender = threading.Thread(target=producer.send, args=(group,))
        sender.start()
        self.assertTrue(testing.wait_until(lambda: len(said) >= 1, 30), said)
        self.assertTrue(sender.is_alive())
        broker.start()
        sender.join(60)
        self.assertFalse(sender.is_alive())
        self.assertIn("kafka: send failed", said[0])
        # the retries between (every 0.1 s) told in no line of their own: the outage's end
        self.assertEqual(len(said), 2, said)
        self.assertRegex(said[1], r"^kafka: working again after [0-9.]+ s, [0-9]+ failed "
                                  r"attempts$")
        got = consume(broker.address, topic, len(values))
        # a broker keeping its data still has the first message; the rest follow in order
        self.assertEqual([v for v in got if v != b"before"], values)
