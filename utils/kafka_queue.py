# -*- test-case-name: utils.test.test_kafka_queue -*-
"""Kafka producer and consumer services that never block the reactor.

`KafkaProducerService.send(topic, value)` appends the message to an in-memory queue and
returns at once.  A thread of the service owns the kafka-python producer and hands it the
queued messages in order.  The producer is set to retry without a deadline and with one
request in flight per connection, so while the broker is down messages wait (the queue
grows, bounded by `queue_limit`: past it `send` raises `QueueFull`, which callers turn into
"service unavailable") and leave in order once it is back.  Only errors that retrying cannot
cure (a message too large, say) drop a message; they are logged at critical level.
Delivery results come back on the reactor thread, as counters and optional callbacks.

`KafkaConsumerService` reads one partition from an explicit offset in a thread and hands
the messages, with their offsets, to `on_message(offset, value)` on the reactor thread, in
order; at most `limit` messages are handed over and not yet processed at any time.  A
broker it cannot reach is logged once, as an error, and its return once; a topic recreated
meanwhile (a broker keeping its topics in memory restarted) is found by the last record
read, no longer at its offset, and read again from its start.  A consumer resuming where
an earlier run stopped can be given a digest of the last record that run handled
(`record_digest`): the record is then checked first, and a topic recreated between the runs
is read again from its start too.

`InProcessBus` offers the same two interfaces without Kafka (the embedded mode).
"""

import collections
import contextlib
import hashlib
import json
import os
import threading
import time

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from utils.outage import Outage, on_log

__all__ = ["KafkaProducerService", "KafkaConsumerService", "QueueFull", "InProcessBus",
           "record_digest"]

DAY_MS = 24 * 3600 * 1000


def _retry_unknown_errors():
    """Let the producer retry, in place, a produce answered with UnknownError (-1).

    Some Kafka-compatible brokers answer a produce to a topic they have just lost (after a
    restart) with -1 rather than a retriable code.  Retried in place, after a metadata
    refresh that re-creates the topic, the batch keeps its order; failed, it would be lost.
    """
    from kafka import errors
    if issubclass(errors.kafka_errors[-1], errors.RetriableError):
        return

    class TransientUnknownError(errors.UnknownError, errors.InvalidMetadataError):
        retriable = True
        invalid_metadata = True

    errors.kafka_errors[-1] = TransientUnknownError


class QueueFull(Exception):
    """Too many messages wait for the broker."""


# Messages go out in order (one request in flight), are retried for a day, and gather in
# batches of up to 1 MB per topic: with kafka-python's default of 16 KB, a burst fills a
# batch every few dozen messages and wakes the sender thread on nearly every send.
PRODUCER_CONFIG = dict(
    acks=1, linger_ms=1, retries=2 ** 31 - 1, delivery_timeout_ms=DAY_MS,
    enable_idempotence=False, max_in_flight_requests_per_connection=1,
    request_timeout_ms=5000, reconnect_backoff_max_ms=1000,
    max_request_size=16 * 1024 * 1024, batch_size=1024 * 1024)


def _reactor(reactor):
    if reactor is None:
        from twisted.internet import reactor
    return reactor


def _bytes(value):
    return value.encode() if isinstance(value, str) else value


def record_digest(value) -> str:
    """The SHA-1 of a record's value, in hex: what a consumer resuming after it is given
    (`last_digest`) to check that the record is still at its offset.  A record without a
    value (None: a tombstone) has that of an empty one."""
    return hashlib.sha1(_bytes(value) or b"").hexdigest()


class _Remembered(collections.namedtuple("_Remembered", "offset digest")):
    """The last record an earlier run handled, known by its offset and digest."""

    def found_in(self, record):
        return record_digest(record.value) == self.digest


def _same(found, last):
    """Whether `found`, read at the offset of the last record handed over, is it."""
    if isinstance(last, _Remembered):
        return last.found_in(found)
    return found.timestamp == last.timestamp and found.value == last.value


class KafkaProducerService(service.Service):
    log = Logger()

    def __init__(self, brokers, reactor=None, queue_limit=1000000, name="kafka producer",
                 stop_timeout=10.0, **producer_config):
        self.brokers = brokers
        self.reactor = _reactor(reactor)
        self.queue_limit = queue_limit
        self.name = name
        self.stop_timeout = stop_timeout
        self.config = dict(PRODUCER_CONFIG, max_block_ms=1000)
        self.config.update(producer_config)
        self._outbox = collections.deque()
        self._wakeup = threading.Condition()
        self._thread = None
        self._stopping = False
        self._stopped = None
        self._producer = None
        self.queued = 0        # accepted by send(), not yet delivered or failed
        self.queued_by_topic = collections.Counter()
        self.delivered = 0
        self.failed = 0
        self.broker_up = None  # unknown until the first attempt

    @property
    def queue_length(self) -> int:
        return self.queued

    def topic_queue_length(self, topic) -> int:
        return self.queued_by_topic[topic]

    def stats(self):
        return {"queued": self.queued, "delivered": self.delivered, "failed": self.failed}

    # -- reactor side -----------------------------------------------------------------

    def send(self, topic: str, value, partition: int = 0, callback=None):
        """Queue one message; `callback(error_or_None)` runs on the reactor when done."""
        if self.queued >= self.queue_limit:
            raise QueueFull("%s: %d messages wait for the broker" % (self.name, self.queued))
        self.queued += 1
        self.queued_by_topic[topic] += 1
        self._outbox.append((topic, _bytes(value), partition, callback))
        if len(self._outbox) == 1:
            with self._wakeup:
                self._wakeup.notify()

    def _report(self, results):
        for topic, callback, error in results:
            self.queued -= 1
            self.queued_by_topic[topic] -= 1
            if error is None:
                self.delivered += 1
            else:
                self.failed += 1
            if callback is not None:
                try:
                    callback(error)
                except Exception:
                    self.log.failure("{name}: delivery callback failed", name=self.name)

    def _broker_state(self, up, error=None):
        if up == self.broker_up:
            return
        self.broker_up = up
        if up:
            self.log.info("{name}: connected to {brokers}", name=self.name, brokers=self.brokers)
        else:
            self.log.error("{name}: broker {brokers} unavailable: {error}; messages are kept",
                           name=self.name, brokers=self.brokers, error=error)

    def startService(self):
        service.Service.startService(self)
        self._stopping = False
        self._stopped = defer.Deferred()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stopService(self):
        service.Service.stopService(self)
        if self._thread is None:
            return defer.succeed(None)
        self._stopping = True
        with self._wakeup:
            self._wakeup.notify()
        self._thread = None
        return self._stopped

    # -- producer thread --------------------------------------------------------------

    def _connect(self):
        from kafka import KafkaProducer
        _retry_unknown_errors()
        while not self._stopping:
            try:
                producer = KafkaProducer(bootstrap_servers=self.brokers, **self.config)
            except Exception as e:
                self.reactor.callFromThread(self._broker_state, False, e)
                with self._wakeup:
                    self._wakeup.wait(1.0)
                continue
            self.reactor.callFromThread(self._broker_state, True)
            return producer
        return None

    def _run(self):
        producer = self._connect()
        pending = collections.deque()   # (topic, callback, error) results to report
        lock = threading.Lock()
        # a stall (messages in flight, no answer for a request timeout) means the broker is
        # away: kafka-python retries silently, so this is how the outage becomes visible
        progress = {"in_flight": 0, "last": time.monotonic(), "stalled": False}
        stall_after = self.config["request_timeout_ms"] / 1000.0

        def done(topic, callback, error):
            with lock:
                first = not pending
                pending.append((topic, callback, error))
                progress["in_flight"] -= 1
                progress["last"] = time.monotonic()
                recovered, progress["stalled"] = progress["stalled"], False
            if recovered:
                self.reactor.callFromThread(self._broker_state, True)
            if first:
                self.reactor.callFromThread(flush_results)

        def check_stall():
            with lock:
                stalled = (progress["in_flight"] > 0 and not progress["stalled"]
                           and time.monotonic() - progress["last"] > stall_after)
                if stalled:
                    progress["stalled"] = True
            if stalled:
                self.reactor.callFromThread(
                    self._broker_state, False,
                    "no delivery for %.1f s" % (time.monotonic() - progress["last"]))

        def flush_results():
            with lock:
                results = list(pending)
                pending.clear()
            self._report(results)

        while producer is not None:
            check_stall()
            if not self._outbox:
                if self._stopping:
                    break
                with self._wakeup:
                    if not self._outbox and not self._stopping:
                        self._wakeup.wait(0.5)
                continue
            topic, value, partition, callback = self._outbox[0]
            try:
                future = producer.send(topic, value=value, partition=partition)
            except Exception as e:
                if _retriable(e):
                    self.reactor.callFromThread(self._broker_state, False, e)
                    if self._stopping:
                        break       # what is left is reported below
                    time.sleep(0.1)
                    continue
                self._outbox.popleft()
                self.reactor.callFromThread(
                    self.log.critical, "{name}: message to {topic} dropped: {error}",
                    name=self.name, topic=topic, error=e)
                with lock:
                    progress["in_flight"] += 1   # done() counts it back
                done(topic, callback, e)
                continue
            self._outbox.popleft()
            with lock:
                if progress["in_flight"] == 0:
                    progress["last"] = time.monotonic()
                progress["in_flight"] += 1
            future.add_callback(lambda _, cb=callback, t=topic: done(t, cb, None))
            future.add_errback(
                lambda error, cb=callback, t=topic: self._delivery_failed(error, cb, t, done))
        if producer is not None:
            try:
                producer.flush(timeout=self.stop_timeout)
            except Exception as e:
                self.reactor.callFromThread(
                    self.log.error, "{name}: could not flush every message: {error}",
                    name=self.name, error=e)
            try:
                producer.close(timeout=1)
            except Exception as e:
                self.reactor.callFromThread(
                    self.log.warn, "{name}: closing the producer failed: {error}",
                    name=self.name, error=e)
        left = len(self._outbox)
        if left:
            self.reactor.callFromThread(
                self.log.critical, "{name}: stopped with {count} messages not sent",
                name=self.name, count=left)
        self.reactor.callFromThread(self._stopped.callback, None)

    def _delivery_failed(self, error, callback, topic, done):
        self.reactor.callFromThread(
            self.log.critical, "{name}: delivery to {topic} failed: {error}",
            name=self.name, topic=topic, error=error)
        done(topic, callback, error)


def _retriable(error):
    from kafka.errors import KafkaError, KafkaTimeoutError
    if isinstance(error, KafkaTimeoutError):
        return True
    return isinstance(error, KafkaError) and getattr(error, "retriable", False)


CONSUMER_STOP_WAIT = 2.0        # seconds a stopping consumer waits for its reading thread
# kafka-python's poll retries a broker it cannot reach in silence, and says nothing either of
# a quiet topic: after PROBE_AFTER seconds without a record, and as long as none comes, the
# consumer asks the broker for the end of its partition every PROBE_AFTER seconds, and takes
# the broker for unreachable when there is no answer in PROBE_TIMEOUT seconds
PROBE_AFTER = 2.0
PROBE_TIMEOUT = 2.0
# records that come after CHECK_AFTER seconds without any are read again from the last
# record handed over, to check that it is still there: a broker keeping its topics in memory
# that restarted (or lost its data) has a new topic, whose records at the offsets read next
# are not the ones that followed it
CHECK_AFTER = 0.5


class KafkaConsumerService(service.Service):
    """Reads one partition of a topic from an explicit offset.

    `offset`: an int (the next offset to read), "earliest", or "latest"/None (only new
    messages).  `on_message(offset, value)` runs on the reactor thread.  `last_digest`, with
    an int offset: the `record_digest` of the record before it, the last one an earlier run
    handled, checked before anything is handed over, as after a pause.

    A broker that does not answer is logged once (error) and once again when it is back
    (info).  After a pause (no record for CHECK_AFTER seconds: a broker lost and back, or a
    quiet topic) the first records are checked against the last one handed over: when it is
    gone or another record holds its offset, the topic was recreated, and it is read again
    from its start (its end for a consumer of only new messages).
    """

    log = Logger()
    probe_after = PROBE_AFTER
    probe_timeout = PROBE_TIMEOUT
    check_after = CHECK_AFTER

    def __init__(self, brokers, topic, on_message, partition=0, offset=None, reactor=None,
                 limit=1000, name=None, last_digest=None, outage=None, **consumer_config):
        self.brokers = brokers
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.last_digest = last_digest
        self.on_message = on_message
        self.reactor = _reactor(reactor)
        self.limit = max(1, limit)
        self.name = name or "kafka consumer %s" % topic
        self.config = dict(enable_auto_commit=False, group_id=None,
                           auto_offset_reset="earliest", reconnect_backoff_max_ms=1000,
                           request_timeout_ms=30000, max_poll_records=self.limit)
        self.config.update(consumer_config)
        self._slots = threading.Semaphore(self.limit)
        self._stopping = threading.Event()
        self._thread = None
        self._stopped = None
        self.received = 0
        self.last_offset = None
        self.broker_up = None
        # the broker away told as an outage (`utils.outage`): an error, an alert once it
        # has lasted 10 s, an error a minute, a warning when reading goes on.  A daemon's
        # consumers of one broker may share it (`outage`), to tell its outage once.
        self.outage = outage or Outage(self.name, on_log(self.log),
                                       clock=lambda: self.reactor.seconds())
        # with offset "latest": the first offset read, once the broker has told it
        self.start_offset = None
        # of the reading thread: the broker's state it last reported, the last record it
        # handed over (None before the first, and after the partition is read again), and
        # whether the records coming next start with that one (a check under way)
        self._reported = None
        self._last = None
        self._checking = False
        self._short_seen = 0
        self._past_seen = 0         # empty polls in a row past the end of the partition
        self._clock = time.monotonic

    def startService(self):
        service.Service.startService(self)
        self._stopping.clear()
        self._stopped = defer.Deferred()
        self._reported, self._last, self._checking = None, None, False
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stopService(self):
        service.Service.stopService(self)
        if self._thread is None:
            return defer.succeed(None)
        self._stopping.set()
        self._thread = None
        # a consumer has nothing to flush: a thread still waiting on an unreachable broker
        # (kafka-python's bootstrap blocks for request_timeout_ms) is left to end by itself
        return self._stopped.addTimeout(CONSUMER_STOP_WAIT, self.reactor,
                                        onTimeoutCancel=lambda result, timeout: None)

    def _ended(self, stopped):
        if not stopped.called:
            stopped.callback(None)

    def _broker_state(self, up, error=None):
        before, self.broker_up = self.broker_up, up
        if not up:
            self.outage.failed("broker %s unavailable: %s; reading %s[%d] waits for it"
                               % (self.brokers, error, self.topic, self.partition), self)
            return
        if before is None:
            self.log.info("{name}: reading {topic}[{partition}] from {brokers}",
                          name=self.name, topic=self.topic, partition=self.partition,
                          brokers=self.brokers)
        self.outage.succeeded(self)

    def _reachable(self, up, error=None):
        """Tell the reactor, from the reading thread, that the broker answers (only when it
        did not before) or not (each failed attempt, for the outage to count); nothing once
        the service stops (a thread still blocked in a request then tells nothing when it
        returns)."""
        if (not up or up != self._reported) and not self._stopping.is_set():
            self._reported = up
            self.reactor.callFromThread(self._broker_state, up, error)

    def _deliver(self, batch):
        for offset, value in batch:
            if self._stopping.is_set():
                break
            self.received += 1
            self.last_offset = offset
            try:
                self.on_message(offset, value)
            except Exception:
                self.log.failure("{name}: handling message {offset} failed", name=self.name,
                                 offset=offset)
        for _ in batch:
            self._slots.release()

    def _open(self):
        from kafka import KafkaConsumer, TopicPartition
        while not self._stopping.is_set():
            try:
                consumer = KafkaConsumer(bootstrap_servers=self.brokers, **self.config)
                tp = self._tp = TopicPartition(self.topic, self.partition)
                consumer.assign([tp])
                self._check_partition(consumer)
                self._seek_start(consumer, tp)
                self._reachable(True)
                return consumer
            except Exception as e:
                self._reachable(False, e)
                self._stopping.wait(1.0)
        return None

    def _seek_start(self, consumer, tp):
        self._skip_before = None
        if isinstance(self.offset, int) and self.offset > 0 and self.last_digest:
            # the earlier run's last record comes first, to be checked
            self._last = _Remembered(self.offset - 1, self.last_digest)
            self._check(consumer)
        elif isinstance(self.offset, int):
            consumer.seek(tp, self.offset)
        elif self.offset == "earliest":
            consumer.seek_to_beginning(tp)
        else:
            self._seek_latest(consumer, tp)

    def _check_partition(self, consumer):
        """Say so when the topic exists without the partition asked for: the consumer
        would wait on it without a word (the config's `partition` names one the topic
        does not have)."""
        partitions = consumer.partitions_for_topic(self.topic)
        if partitions and self.partition not in partitions:
            self.reactor.callFromThread(
                self.log.error, "{name}: {topic} has no partition {partition} (it has "
                "{partitions}): nothing is read until it has", name=self.name,
                topic=self.topic, partition=self.partition,
                partitions=", ".join(map(str, sorted(partitions))))

    def _seek_latest(self, consumer, tp):
        # Some Kafka-compatible brokers report the end of a partition (ListOffsets) as the
        # last batch's base offset + 1 rather than its last offset + 1.  Read from one
        # before the reported end, and take the end from the first fetch's answer, its high
        # watermark, exact on every broker: what lies before it was written before the
        # first fetch, and is skipped, as a consumer starting at the end skips it.
        end = consumer.end_offsets([tp])[tp]
        consumer.seek(tp, max(end - 1, 0))
        self._skip_before = (tp, end)
        self.start_offset = None

    def _fresh(self, consumer, batch):
        """The records of `batch` past the end found when the consumer started."""
        tp, reported = self._skip_before
        if self.start_offset is None:
            end = consumer.highwater(tp)
            if end is None:
                if not batch:       # no fetch answered yet
                    return []
                end = reported
            self.start_offset = max(end, reported)
        fresh = [m for m in batch if m.offset >= self.start_offset]
        if fresh:
            self._skip_before = None
        return fresh

    def _read_again(self, consumer):
        """Go to the start of the partition (to its end for a consumer started at the
        latest offset, or by `auto_offset_reset`); returns which."""
        # a consumer of what is produced from now on (accessws's pushes) goes to the end:
        # what the topic holds is old news
        earliest = (self.offset != "latest"
                    and self.config.get("auto_offset_reset") == "earliest")
        if earliest:
            consumer.seek_to_beginning(self._tp)
        else:
            consumer.seek_to_end(self._tp)
        # nothing of the partition read again has been handed over yet
        self._last = None
        self._checking = False
        return "start" if earliest else "end"

    def _past_end(self, consumer):
        """Read the partition again from its start (its end for a consumer started at the
        latest offset, or by `auto_offset_reset`) when the position is past its end: the
        topic was recreated (a broker keeping it in memory restarted) or truncated.  Kafka
        answers such a fetch OFFSET_OUT_OF_RANGE, which kafka-python resets by itself; a
        broker that answers it with no error and its end would have the consumer wait
        there without a word, then skip what comes before the old position.  A record to
        check (`_check`) where the partition now ends is a recreated topic too.  Either is
        acted on when seen at two empty polls in a row: a new leader's end can lag for a
        moment behind its predecessor's."""
        tp = self._tp
        end = consumer.highwater(tp)
        if end is None:
            return
        try:
            # a reset asked for before and not resolved yet (the broker away) is not
            # waited for: the consumer must stay stoppable
            position = consumer.position(tp, timeout_ms=200)
        except Exception:
            return
        if position is None:
            return
        if position <= end:
            self._past_seen = 0
            if self._checking and end <= self._last.offset:
                # the record to check, read before (by this run or an earlier one), is not
                # there and the partition ends right before it; seen twice in a row, as a
                # new leader's end can lag for a moment
                self._short_seen += 1
                if self._short_seen >= 2:
                    self._recreated(consumer, "the partition ends at %d, before offset %d"
                                    % (end, self._last.offset))
            return
        # past the end: seen twice in a row too
        self._past_seen += 1
        if self._past_seen < 2:
            return
        self._past_seen = 0
        where = self._read_again(consumer)
        self.reactor.callFromThread(
            self.log.error, "{name}: offset {position} is past the end of {topic} ({end}): "
            "the topic was recreated or truncated; reading it again from its {where}",
            name=self.name, position=position, topic=self.topic, end=end, where=where)

    def _probe(self, consumer):
        """Ask the broker for the end of the partition, to learn whether it answers."""
        try:
            consumer.end_offsets([self._tp], timeout_ms=int(self.probe_timeout * 1000))
        except Exception as e:
            self._reachable(False, "no answer in %g s to a request for the end of %s[%d] "
                                   "(%s)" % (self.probe_timeout, self.topic, self.partition,
                                             type(e).__name__))
        else:
            self._reachable(True)

    def _check(self, consumer):
        """Have the next records start with the last one handed over, to check it."""
        consumer.seek(self._tp, self._last.offset)
        self._checking = True
        self._short_seen = 0        # times the partition was seen to end before it

    def _checked(self, consumer, batch):
        """The records of `batch` after the last one handed over when they follow it; none
        when the topic was recreated, which is then read again."""
        self._checking = False
        first, last = batch[0], self._last
        if first.offset > last.offset:
            # the record is gone, those after it are there: the start of the partition
            # moved past it (retention), and the broker's reset brought the position there
            return batch
        if first.offset < last.offset:
            # the broker reset the position to a start before it: the partition ends
            # before it now
            found = "offset %d is gone (the partition starts again at %d)" % (
                last.offset, first.offset)
        elif _same(first, last):
            return batch[1:]
        else:
            found = "another record is at offset %d" % last.offset
        self._recreated(consumer, found)
        return []

    def _recreated(self, consumer, found):
        where = self._read_again(consumer)
        self.reactor.callFromThread(
            self.log.warn, "{name}: {topic}[{partition}] is not the one read so far: {found}; "
            "the topic was recreated (its broker restarted without its data), reading it "
            "again from its {where}", name=self.name, topic=self.topic,
            partition=self.partition, found=found, where=where)

    def _run(self):
        stopped = self._stopped
        consumer = self._open()
        # when the last records came (or the consumer opened), and the last probe
        quiet_since = probed = self._clock()
        while consumer is not None and not self._stopping.is_set():
            try:
                records = consumer.poll(timeout_ms=200, max_records=self.limit)
            except Exception as e:
                self._reachable(False, e)
                self._stopping.wait(1.0)
                continue
            batch = [m for msgs in records.values() for m in msgs]
            if self._skip_before is not None:
                batch = self._fresh(consumer, batch)
            now = self._clock()
            if not batch:
                self._past_end(consumer)
                if now - max(quiet_since, probed) >= self.probe_after:
                    self._probe(consumer)
                    probed = self._clock()
                continue
            self._reachable(True)
            self._past_seen = 0
            if self._checking:
                batch = self._checked(consumer, batch)
            elif self._last is not None and now - quiet_since >= self.check_after:
                self._check(consumer)       # these records come again after the last one
                continue
            quiet_since = now
            if not batch:
                continue
            taken = 0
            for _ in batch:
                while not self._slots.acquire(timeout=0.2):
                    if self._stopping.is_set():
                        break
                else:
                    taken += 1
                    continue
                break
            if taken < len(batch):
                for _ in range(taken):
                    self._slots.release()
                break
            self._last = batch[-1]
            self.reactor.callFromThread(self._deliver, [(m.offset, m.value) for m in batch])
        if consumer is not None:
            try:
                consumer.close()
            except Exception as e:
                self.reactor.callFromThread(
                    self.log.warn, "{name}: closing the consumer failed: {error}",
                    name=self.name, error=e)
        self.reactor.callFromThread(self._ended, stopped)


class InProcessBus:
    """Topics kept in memory: the embedded stand-in for Kafka.

    `bus.producer()` and `bus.consumer(topic, on_message, offset=...)` give services with
    the interfaces of KafkaProducerService and KafkaConsumerService.  Messages are handed
    over on a later reactor turn, in order, with offsets counted from 0 per topic.  With a
    `path` (a folder) each topic is also kept in a file there, read back at start, so that
    consumers resume at their offsets after a restart.
    """

    def __init__(self, reactor=None, retention=1000000, path=None):
        self.reactor = _reactor(reactor)
        self.retention = retention
        self.path = path
        self.topics = {}        # name -> [first offset, deque of values]
        self._files = {}
        self._consumers = collections.defaultdict(list)
        if path is not None:
            os.makedirs(path, exist_ok=True)

    def _log(self, topic):
        entry = self.topics.get(topic)
        if entry is None:
            entry = [0, collections.deque()]
            if self.path is not None:
                self._load(topic, entry)
            # kept once loaded: a file that cannot be is reported to every caller
            self.topics[topic] = entry
        return entry

    # with a path, each topic is also a file of lines: an optional `#first N` header, then
    # one JSON string per message; it is read back at start and compacted to the retention

    def _file(self, topic):
        return os.path.join(self.path, topic + ".log")

    def _load(self, topic, entry):
        first, values = 0, []
        with contextlib.suppress(FileNotFoundError):     # a topic never written
            with open(self._file(topic), "rb") as f:
                for number, line in enumerate(f, 1):
                    if not line.endswith(b"\n"):
                        break           # a write cut short by a crash
                    try:
                        if line.startswith(b"#first "):
                            first = int(line[7:])
                        else:
                            values.append(json.loads(line).encode("utf-8", "surrogateescape"))
                    except (ValueError, AttributeError):
                        raise ValueError("%s, line %d: neither a message (a JSON string) nor "
                                         "the #first header: %r" % (
                                             self._file(topic), number, line[:100])) from None
        drop = max(0, len(values) - self.retention)
        entry[0] = first + drop
        entry[1].extend(values[drop:])
        if drop or values:
            tmp = self._file(topic) + ".tmp"
            with open(tmp, "wb") as f:
                f.write(b"#first %d\n" % entry[0])
                f.writelines(self._line(v) for v in entry[1])
            os.replace(tmp, self._file(topic))
        self._files[topic] = open(self._file(topic), "ab")

    @staticmethod
    def _line(value):
        return json.dumps(value.decode("utf-8", "surrogateescape")).encode() + b"\n"

    def close(self):
        for f in self._files.values():
            f.close()
        self._files.clear()

    def end_offset(self, topic):
        first, values = self._log(topic)
        return first + len(values)

    def append(self, topic, value):
        entry = self._log(topic)
        value = _bytes(value)
        entry[1].append(value)
        if self.path is not None:
            f = self._files[topic]
            f.write(self._line(value))
            f.flush()
        if len(entry[1]) > self.retention:
            entry[1].popleft()
            entry[0] += 1
        for consumer in self._consumers[topic]:
            consumer._wake()

    def read(self, topic, offset, limit):
        first, values = self._log(topic)
        start = max(offset, first)
        stop = min(first + len(values), start + limit)
        return [(i, values[i - first]) for i in range(start, stop)]

    def producer(self, name="bus producer"):
        return _BusProducer(self, name)

    def consumer(self, topic, on_message, offset=None, limit=1000, name=None, partition=0,
                 last_digest=None):
        return _BusConsumer(self, topic, on_message, offset, limit, name, last_digest)


class _BusProducer(service.Service):
    def __init__(self, bus, name):
        self.bus = bus
        self.name = name
        self.delivered = 0
        self.failed = 0
        self.queue_limit = 0

    queued = 0
    queue_length = 0

    def topic_queue_length(self, topic):
        return 0

    def stats(self):
        return {"queued": 0, "delivered": self.delivered, "failed": 0}

    def send(self, topic, value, partition=0, callback=None):
        self.bus.append(topic, value)
        self.delivered += 1
        if callback is not None:
            self.bus.reactor.callLater(0, callback, None)


class _BusConsumer(service.Service):
    log = Logger()

    def __init__(self, bus, topic, on_message, offset, limit, name, last_digest=None):
        self.bus = bus
        self.topic = topic
        self.on_message = on_message
        self.offset = offset
        self.last_digest = last_digest
        self.limit = limit
        self.name = name or "bus consumer %s" % topic
        self.next_offset = None
        self.received = 0
        self.last_offset = None
        self._scheduled = None

    def startService(self):
        service.Service.startService(self)
        if isinstance(self.offset, int) and self._resumes():
            self.next_offset = self.offset
        elif isinstance(self.offset, int) or self.offset == "earliest":
            self.next_offset = self.bus._log(self.topic)[0]
        else:
            self.next_offset = self.bus.end_offset(self.topic)
        self.bus._consumers[self.topic].append(self)
        self._wake()

    def _resumes(self):
        """Whether the topic still holds the record before the offset asked for, as
        `last_digest` knows it (or past retention); said as a warning when it does not."""
        if not self.offset or not self.last_digest:
            return True
        before = self.offset - 1
        found = self.bus.read(self.topic, before, 1)
        if found and found[0][0] > before:
            return True         # gone with retention, those after it kept
        if found and record_digest(found[0][1]) == self.last_digest:
            return True
        self.log.warn("{name}: {topic} is not the one read before: {found}; it was "
                      "recreated, reading it again from its start", name=self.name,
                      topic=self.topic, found="another record is at offset %d" % before
                      if found else "it ends at %d" % self.bus.end_offset(self.topic))
        return False

    def stopService(self):
        service.Service.stopService(self)
        if self in self.bus._consumers[self.topic]:
            self.bus._consumers[self.topic].remove(self)
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None

    def _wake(self):
        if self._scheduled is None and self.running:
            self._scheduled = self.bus.reactor.callLater(0, self._deliver)

    def _deliver(self):
        self._scheduled = None
        batch = self.bus.read(self.topic, self.next_offset, self.limit)
        for offset, value in batch:
            self.next_offset = offset + 1
            self.received += 1
            self.last_offset = offset
            try:
                self.on_message(offset, value)
            except Exception:
                self.log.failure("{name}: handling message {offset} failed", name=self.name,
                                 offset=offset)
            if not self.running:
                return
        if batch and self.next_offset < self.bus.end_offset(self.topic):
            self._wake()
