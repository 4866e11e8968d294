"""A lean, blocking Kafka producer for sending many small messages in large groups.

The matchengine's writer sends each group of messages it gathers (a few thousand JSON texts)
and waits until every one is acknowledged before it confirms the group.  kafka-python's
producer spends about 13 us of CPU on each `send` (a future, the accumulator's locks, a
record appended through several calls); here a group becomes one uncompressed record batch
(format v2) per topic and chunk, built in one pass, and one Produce request per leader, for
under 2 us a message.

Wire protocol: ApiVersions v0 (to check the broker), Metadata v4 (leaders, creating topics
as the brokers allow) and Produce v3, request header v1: versions that Kafka 1.0 to 4.x
serve.  Every message goes to partition 0, as the original sends them.  A request that fails
(connection lost, no leader, a leader change, a timeout, a broker that lost the topic) is
reported (`utils.outage`: the first failure, then now and then while it lasts, and its end)
and sent again after the metadata is read again, every `retry_delay` seconds, until it is
acknowledged: delivery is at least once, in order per topic, a request resent after its
answer was lost (a timeout, a connection lost once the request was sent) being the one way to
a duplicate (the broker may have appended it).  A connection the broker closed while idle is
replaced before a request goes out on it.  A batch the
broker finds too large is sent again in halves, down to single messages; a message it
refuses for good (too large, corrupt) is reported and dropped, as the original drops it.
"""

import contextlib
import select
import socket
import struct
import time

from crc32c import crc32c

from utils.outage import Outage

API_PRODUCE, API_METADATA, API_VERSIONS = 0, 3, 18
# a Produce is acknowledged once every in-sync replica has its batch (acks=all): with a
# leader's own acknowledgement alone (acks=1) a leader lost before its followers copied the
# batch takes it with it, and the writer had confirmed it
ACKS = -1
PRODUCE_VERSION, METADATA_VERSION = 3, 4
CLIENT_ID = b"viabtc"
# a record batch stays under the brokers' default message.max.bytes (1,048,588)
MAX_BATCH_BYTES = 1000000
# metadata requests for a topic without a leader before a round counts as failed, and the
# seconds between two
LEADER_POLLS, LEADER_POLL_DELAY = 10, 0.05
# error codes after which a retry cannot succeed: the batch is reported and dropped
# (corrupt message, message too large, record list too large, invalid record, invalid
# required acks, topic authorization failed, unsupported version)
FATAL_ERRORS = frozenset((2, 10, 18, 87, 21, 29, 35))
# of those, the ones a batch of fewer messages can get past (a broker's or a topic's
# max.message.bytes below the batches made here)
TOO_LARGE = frozenset((10, 18))
ERROR_NAMES = {
    -1: "unknown server error", 2: "corrupt message", 3: "unknown topic",
    5: "leader not available", 6: "not leader for partition", 7: "request timed out",
    10: "message too large", 18: "record list too large", 19: "not enough replicas",
    20: "not enough replicas after append", 21: "invalid required acks",
    29: "topic authorization failed", 35: "unsupported version", 87: "invalid record"}


def _error_name(code):
    return ERROR_NAMES.get(code, "error %d" % code)


class KafkaWireError(Exception):
    """A request that failed; `fatal` when sending it again cannot help."""

    def __init__(self, message, fatal=False):
        super().__init__(message)
        self.fatal = fatal


def _uvarint(value):
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# the varints of zigzag-encoded non-negative values (2n) below 2**15, which cover the offset
# deltas and sizes of every record of a batch of this size
_EVEN_VARINTS = [_uvarint(2 * n) for n in range(1 << 15)]


def _zigzag(n):
    return _EVEN_VARINTS[n] if n < 1 << 15 else _uvarint(2 * n)


def record_batch(values, timestamp_ms):
    """The bytes of one uncompressed v2 record batch of `values` (bytes each, no key, no
    header), offsets counted from 0, every record stamped `timestamp_ms`."""
    parts = []
    append = parts.append
    for delta, value in enumerate(values):
        # attributes, timestamp delta 0, offset delta, key length -1 (zigzag 1)
        head = b"\0\0" + _zigzag(delta) + b"\1" + _zigzag(len(value))
        append(_zigzag(len(head) + len(value) + 1))
        append(head)
        append(value)
        append(b"\0")       # no headers
    count = len(values)
    # attributes, last offset delta, first and max time stamps, producer id, epoch and
    # sequence (none: not idempotent), record count
    body = struct.pack(">hiqqqhii", 0, count - 1, timestamp_ms, timestamp_ms, -1, -1, -1,
                       count) + b"".join(parts)
    # base offset, length of what follows, partition leader epoch, magic, CRC-32C
    return struct.pack(">qiibI", 0, len(body) + 9, -1, 2, crc32c(body)) + body


def chunks(values, limit=MAX_BATCH_BYTES):
    """`values` cut, in order, into runs whose record batch stays near `limit` bytes."""
    run, size = [], 61
    for value in values:
        cost = len(value) + 12
        if run and size + cost > limit:
            yield run
            run, size = [], 61
        run.append(value)
        size += cost
    if run:
        yield run


# -- protocol primitives ---------------------------------------------------------------

def _string(text):
    data = text.encode()
    return struct.pack(">h", len(data)) + data


class _Reader:
    """Reads the fields of a response body in order."""

    __slots__ = ("data", "at")

    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, fmt):
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return values if len(values) > 1 else values[0]

    def string(self):
        size = self.take(">h")
        if size < 0:
            return None
        text = self.data[self.at:self.at + size].decode()
        self.at += size
        return text

    def array(self, item):
        return [item() for _ in range(self.take(">i"))]


class Connection:
    """One broker connection, one request at a time."""

    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.correlation = 0

    def closed(self):
        """Whether the broker has closed the connection (its end, or an error, waits to be
        read): a request sent on it would be lost, or half sent."""
        try:
            if not select.select([self.sock], [], [], 0)[0]:
                return False        # nothing to read: open
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def call(self, api_key, version, body):
        """Send a request, return its response body (after the correlation id)."""
        self.correlation = (self.correlation + 1) & 0x7FFFFFFF
        header = struct.pack(">hhih", api_key, version, self.correlation,
                             len(CLIENT_ID)) + CLIENT_ID
        self.sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
        size = struct.unpack(">i", self._read(4))[0]
        data = self._read(size)
        if struct.unpack_from(">i", data)[0] != self.correlation:
            raise KafkaWireError("response out of order")
        return data[4:]

    def _read(self, size):
        data = bytearray()
        while len(data) < size:
            piece = self.sock.recv(min(size - len(data), 1 << 20))
            if not piece:
                raise KafkaWireError("connection closed by the broker")
            data += piece
        return bytes(data)

    def close(self):
        """Close at once, a request not yet sent dropped (SO_LINGER 0): one given up for a
        timeout must not reach the broker after the one sent again in its place."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.sock.close()


DEFAULT_PORT = 9092


def parse_address(text):
    """(host, port) of a broker address: `host:port`, `[v6 address]:port`, or a host alone
    (port 9092).  Raises ValueError for another form."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep or text.endswith("]") or (host.count(":") and not host.endswith("]")):
        host, port = text, str(DEFAULT_PORT)       # no port, or a bare IPv6 address
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("not a Kafka broker address: %r" % text)
    return host, int(port)


class LeanProducer:
    """Sends groups of (topic, bytes) messages to partition 0 of each topic and returns once
    the leaders have acknowledged them, once every in-sync replica holds them (acks=all),
    retrying failed requests in place."""

    def __init__(self, brokers, timeout=10.0, retry_delay=1.0, say=None, sleep=time.sleep,
                 clock=time.time, outage=None):
        self.bootstrap = [parse_address(b) for b in brokers.split(",") if b.strip()]
        if not self.bootstrap:
            raise ValueError("no Kafka broker address in %r" % brokers)
        self.timeout = timeout
        self.retry_delay = retry_delay
        self.say = say or (lambda text: None)
        # failed requests, told as an outage (`utils.outage`): not a line for each retry
        self.outage = outage or Outage("kafka", lambda level, text: self.say(text))
        self.sleep = sleep
        self.clock = clock
        self.nodes = {}         # node id -> (host, port)
        self.leaders = {}       # topic -> node id of partition 0's leader
        self.connections = {}   # node id -> Connection
        self.checked = False
        self.sent = 0
        self.dropped = 0

    # -- connections and metadata -------------------------------------------------------

    def _connect(self, address):
        conn = Connection(address[0], address[1], self.timeout)
        if not self.checked:
            try:
                self._check_versions(conn)
            except BaseException:
                conn.close()
                raise
        return conn

    def _check_versions(self, conn):
        reader = _Reader(conn.call(API_VERSIONS, 0, b""))
        error = reader.take(">h")
        if error:
            raise KafkaWireError("ApiVersions refused (error %d)" % error)
        ranges = {key: (low, high) for key, low, high in
                  reader.array(lambda: reader.take(">hhh"))}
        for key, version, name in ((API_PRODUCE, PRODUCE_VERSION, "Produce"),
                                   (API_METADATA, METADATA_VERSION, "Metadata")):
            low, high = ranges.get(key, (1, 0))
            if not low <= version <= high:
                raise KafkaWireError("the broker does not serve %s v%d (it serves v%d to "
                                     "v%d)" % (name, version, low, high), fatal=True)
        self.checked = True

    def _connection(self, node):
        conn = self.connections.get(node)
        if conn is None:
            conn = self.connections[node] = self._connect(self.nodes[node])
        return conn

    def _drop_connections(self):
        for conn in self.connections.values():
            conn.close()
        self.connections.clear()

    def refresh(self, topics):
        """Read the leaders of `topics` (partition 0) from any broker that answers."""
        body = struct.pack(">i", len(topics)) + b"".join(_string(t) for t in topics) + b"\1"
        addresses = list(self.nodes.values()) + self.bootstrap
        failure = None
        for address in addresses:
            try:
                conn = self._connect(address)
            except (OSError, KafkaWireError) as e:
                if getattr(e, "fatal", False):
                    raise
                failure = e
                continue
            try:
                data = conn.call(API_METADATA, METADATA_VERSION, body)
            except (OSError, KafkaWireError) as e:
                failure = e
                continue
            finally:
                conn.close()
            self._read_metadata(data)
            return
        raise KafkaWireError("no broker of %s answers: %s" % (
            ",".join("%s:%d" % a for a in self.bootstrap), failure))

    def _read_metadata(self, data):
        reader = _Reader(data)
        reader.take(">i")      # throttle time

        def broker():
            node, host, port = reader.take(">i"), reader.string(), reader.take(">i")
            reader.string()    # rack
            return node, (host, port)

        self.nodes.update(reader.array(broker))
        reader.string()        # cluster id
        reader.take(">i")      # controller id

        def partition():
            error, index, leader = reader.take(">hii")
            reader.array(lambda: reader.take(">i"))    # replicas
            reader.array(lambda: reader.take(">i"))    # in-sync replicas
            return index, leader, error

        def topic():
            error, name = reader.take(">h"), reader.string()
            reader.take(">b")  # internal
            return name, error, reader.array(partition)

        for name, error, partitions in reader.array(topic):
            leader = next((leader for index, leader, e in partitions
                           if index == 0 and not e and leader >= 0), None)
            if error or leader is None or leader not in self.nodes:
                self.leaders.pop(name, None)
            else:
                self.leaders[name] = leader

    # -- sending ------------------------------------------------------------------------

    def send(self, messages):
        """Send [(topic, bytes)], in order per topic; returns when all are acknowledged (or
        refused for good, which is reported)."""
        by_topic = {}
        for topic, value in messages:
            values = by_topic.get(topic)
            if values is None:
                values = by_topic[topic] = []
            values.append(value)
        pending = {topic: list(chunks(values)) for topic, values in by_topic.items()}
        while pending:
            try:
                self._send_round(pending)
            except (OSError, ValueError, struct.error, KafkaWireError) as e:
                # fatal ones too: they wait for the brokers to be fixed or replaced (a
                # ValueError: a broker's advertised host name that cannot be encoded)
                self._drop_connections()
                self.leaders.clear()
                self.outage.failed("send failed: %s; retrying in %g s" % (e, self.retry_delay))
                self.sleep(self.retry_delay)
        self.outage.succeeded()

    def _produce(self, node, body):
        """A Produce request's response body.  A connection that served requests before may
        have been closed by the broker while idle (`connections.max.idle.ms`): found so, it
        is replaced before the request goes out.  A request whose answer does not come
        fails (reported, and sent again later: the broker may have appended it)."""
        conn = self._connection(node)
        if conn.correlation and conn.closed():
            conn.close()
            del self.connections[node]
            conn = self._connection(node)
        return conn.call(API_PRODUCE, PRODUCE_VERSION, body)

    def _send_round(self, pending):
        """One Produce request per leader with each topic's next chunk; acknowledged chunks
        leave `pending`.  Raises when any chunk must be sent again."""
        missing = [topic for topic in pending if topic not in self.leaders]
        for attempt in range(LEADER_POLLS):
            if not missing:
                break
            if attempt:
                # a topic the metadata request has just created gets its leader soon
                self.sleep(LEADER_POLL_DELAY)
            self.refresh(missing)
            missing = [topic for topic in missing if topic not in self.leaders]
        if missing:
            raise KafkaWireError("no leader yet for %s" % ", ".join(sorted(missing)))
        by_node = {}
        for topic in pending:
            by_node.setdefault(self.leaders[topic], []).append(topic)
        failed = []
        timestamp = int(self.clock() * 1000)
        for node, topics in by_node.items():
            body = [struct.pack(">hhii", -1, ACKS, int(self.timeout * 1000), len(topics))]
            for topic in topics:
                batch = record_batch(pending[topic][0], timestamp)
                body += (_string(topic), struct.pack(">iii", 1, 0, len(batch)), batch)
            reader = _Reader(self._produce(node, b"".join(body)))

            def partition():
                index, error = reader.take(">ih")
                reader.take(">qq")     # base offset, log append time
                return index, error

            answered = {}
            for _ in range(reader.take(">i")):
                name = reader.string()
                for index, error in reader.array(partition):
                    if index == 0:
                        answered[name] = error
            for topic in topics:
                error = answered.get(topic, -1)
                if not error:
                    self.sent += len(pending[topic].pop(0))
                elif error in TOO_LARGE and len(pending[topic][0]) > 1:
                    chunk = pending[topic].pop(0)
                    half = len(chunk) // 2
                    pending[topic][0:0] = [chunk[:half], chunk[half:]]
                    self.say("kafka: %d messages to %s refused together (%s): sent again in "
                             "halves" % (len(chunk), topic, _error_name(error)))
                elif error in FATAL_ERRORS:
                    chunk = pending[topic].pop(0)
                    self.dropped += len(chunk)
                    self.say("kafka: %d messages to %s refused (%s): dropped" % (
                        len(chunk), topic, _error_name(error)))
                else:
                    self.leaders.pop(topic, None)
                    failed.append("%s: %s" % (topic, _error_name(error)))
                if not pending[topic]:
                    del pending[topic]
        if failed:
            raise KafkaWireError("; ".join(failed))

    def close(self):
        self._drop_connections()
