# -*- test-case-name: utils.test.test_http -*-
"""A fast HTTP/1.1 server for JSON-RPC bodies, on a plain Twisted Protocol and httptools.

Each POST body is a JSON-RPC request `{"id": <int>, "method": "<name>", "params": [...]}`.
The factory validates the envelope the way the original gateway does and hands good requests
to the handler registered for the method:

    =====================================================  ==============================
    not POST, or no body                                   400, empty body, close
    body not JSON, not an object, `id` not an integer,     400, empty body, close
    `method` not a string, `params` not an array
    unknown method                                         404, error 4 "method not found"
    body over `max_body` bytes                             413, empty body, close
    request line and headers over MAX_HEAD_SIZE bytes      400, empty body, close
    =====================================================  ==============================

A handler returns (or fires a Deferred with) `(status, body_bytes)`.  Connections are
persistent; pipelined requests are answered in the order they arrived, whatever order their
handlers finish in.  Bodies may come with Content-Length or chunked, in as many TCP reads as
they like.  `Connection: Upgrade` and `Upgrade` headers change nothing: no protocol is
switched to, and the request is served as any other, as the original serves it.  A
connection idle for `keep_alive` seconds (0: never), or holding a request that does not
complete within `request_timeout` seconds (a slow or stuck client), is closed at once; one
closed after its answers whose client does not take them within `request_timeout` seconds
is cut off.

A client that sends and does not read cannot make the server hold its answers without bound:
once `max_pipeline` requests wait for their answers (those of the read under way still
served), and while the connection's send buffer is full (the transport pauses its
producer), the server reads nothing more from it.  With `max_output`
(bytes; 0 = no bound) a connection whose answers the kernel does not take past that many
bytes is dropped, as the original drops a session over its `buf_limit`.

Responses carry exactly `Date` and `Content-Length`, as the original's do (its `Date` spells
the month in full; this one uses the standard RFC 7231 form).
"""

from email.utils import formatdate

import httptools
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from network.output import close_now, pending_output, unsent_over, write_now
from network.underway import OpenSet
from utils.jsonfmt import dumps, loads

__all__ = ["JSONRPCRequest", "HTTPServerFactory", "HTTPServerProtocol", "error_body",
           "REASONS"]

REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 408: b"Request Timeout",
           413: b"Payload Too Large", 500: b"Internal Server Error", 503: b"Service Unavailable",
           504: b"Gateway Timeout"}


def error_body(code: int, message: str, request_id) -> bytes:
    """The compact JSON-RPC error body the gateway itself writes."""
    return dumps({"error": {"code": code, "message": message}, "result": None,
                  "id": request_id}).encode()


class JSONRPCRequest:
    """One validated JSON-RPC call, with the HTTP connection it came on."""

    __slots__ = ("id", "method", "params", "protocol")

    def __init__(self, request_id, method, params, protocol):
        self.id = request_id
        self.method = method
        self.params = params
        self.protocol = protocol

    @property
    def connected(self):
        return self.protocol.connected


# the headers that say where a body ends
_FRAMING = frozenset((b"content-length", b"transfer-encoding"))

# The bound of a request's line and headers, as the original's parser's (80 kB); a chunked
# body's chunk lines and trailers may take that much again and 8 bytes for each of its own.
# httptools gathers a header until it ends: a request whose bytes read, less its body's, pass
# this once a read is parsed is refused (what it holds then: the bound and a read at most;
# the read that begins a request is not counted).
MAX_HEAD_SIZE = 80 * 1024


class _BadRequest(Exception):
    """A body that is not a JSON-RPC request; answered 400 and closed."""


def parse_envelope(body: bytes):
    """(id, method, params) of a JSON-RPC body, or _BadRequest."""
    try:
        # UTF-8 alone (no byte order mark, no UTF-16 or -32), read as strictly as the
        # original reads it
        data = loads(body.decode("utf-8", "surrogatepass"))
    except ValueError:
        raise _BadRequest("body is not JSON")
    if not isinstance(data, dict):
        raise _BadRequest("body is not a JSON object")
    request_id, method, params = data.get("id"), data.get("method"), data.get("params")
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        raise _BadRequest("id is not an integer")
    if not isinstance(method, str):
        raise _BadRequest("method is not a string")
    if not isinstance(params, list):
        raise _BadRequest("params is not an array")
    return request_id, method, params


class _DateCache:
    def __init__(self, clock):
        self.clock = clock
        self.second = None
        self.text = b""

    def header(self):
        now = int(self.clock.seconds())
        if now != self.second:
            self.second = now
            self.text = formatdate(now, usegmt=True).encode()
        return self.text


@implementer(IHalfCloseableProtocol, IPushProducer)
class HTTPServerProtocol(protocol.Protocol):
    """Parse HTTP requests, dispatch them, write the answers in request order.  A client
    that shuts its side down after its requests still gets their answers.

    It is the producer of its transport: requests read make answers, so a full send buffer
    pauses the reading of requests (`pauseProducing`) until it drains."""

    log = Logger()

    def __init__(self):
        self.parser = httptools.HttpRequestParser(self)
        self.connected = False
        self.slots = []          # [response bytes or None] in request order
        self.written = 0         # responses already written
        self.closing = False     # close once every slot before the bad one is written
        self.paused = False      # max_pipeline requests unanswered
        self.output_full = False  # the send buffer is full
        self.finishing = False   # the server stops: nothing more is read
        self.reading = True
        self.released = False    # told to close once its output is sent
        self.replay = None       # the head of a request with upgrade headers, without them
        self._reset_message()
        self.idle_call = None
        self.request_call = None
        self.close_call = None

    # -- connection --------------------------------------------------------------------

    def connectionMade(self):
        self.connected = True
        self.factory.connections.add(self)
        self.transport.registerProducer(self, True)
        self._touch()

    def connectionLost(self, reason=None):
        self.connected = False
        self.factory.connections.discard(self)
        for call in (self.idle_call, self.request_call, self.close_call):
            if call is not None and call.active():
                call.cancel()
        self.idle_call = self.request_call = self.close_call = None
        # the parser refers back to this protocol: the pair, and the answers and transport
        # buffers it holds (megabytes for a client that did not read), would otherwise wait
        # for the cycle collector, which their bytes do not bring on
        self.parser = None
        self.slots = []
        self.factory.connections.settle()

    def readConnectionLost(self):
        # a request cut short there is not answered
        self.closing = True
        if self.released and self.finishing:
            # the peer's end after ours (`finish`): nothing is left to send
            self.transport.loseConnection()
            return
        self._flush()

    def writeConnectionLost(self):
        """This side's writing shut after its last answer (`finish`): the peer's end, or
        the close deadline, completes the close."""

    def dataReceived(self, data):
        if self.closing:
            return
        self._touch()
        while data is not None:
            data = self._feed(data)

    def _feed(self, data):
        """Parse `data`; what follows a request with upgrade headers, to parse again."""
        if self.in_message:
            self.message_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if self.replay is None:
                # refused already (not a POST with a body): one answer
                if not self.closing:
                    self._reject(400, "upgrade not supported")
                return None
            # what follows the head is the body, then more requests: parsed again after
            # the same head without its upgrade headers
            head, self.replay = self.replay, None
            self.parser = httptools.HttpRequestParser(self)
            return head + data[e.args[0]:]
        except httptools.HttpParserError as e:
            if self.too_large:
                self._reject(413, "body over %d bytes" % self.factory.max_body)
            elif not self.closing:
                self._reject(400, "malformed HTTP: %s" % e)
            return None
        if self.in_message and self.message_bytes - 9 * self.body_size > MAX_HEAD_SIZE \
                and not self.closing:
            self._reject(400, "request headers over %d bytes" % MAX_HEAD_SIZE)
        return None

    def _touch(self):
        if not self.factory.keep_alive:
            return      # 0: idle connections are kept, as the original keeps them
        clock = self.factory.clock
        if self.idle_call is not None and self.idle_call.active():
            self.idle_call.reset(self.factory.keep_alive)
        else:
            self.idle_call = clock.callLater(self.factory.keep_alive, self._idle)

    def _idle(self):
        if self.finishing:
            return      # the server stops: its own deadlines close the connection
        self.log.debug("closing idle connection {peer}", peer=self.transport.getPeer())
        # as the original closes an idle session: at once, whatever the peer left unread
        if self._release():
            close_now(self.transport)

    def _too_slow(self):
        self.log.info("request from {peer} not complete in {seconds} s; closing",
                      peer=self.transport.getPeer(), seconds=self.factory.request_timeout)
        self.closing = True
        self.transport.abortConnection()

    # -- flow control ------------------------------------------------------------------

    def pauseProducing(self):
        """The transport's send buffer is full: read no request until it drains."""
        self.output_full = True
        self._update_reading()

    def resumeProducing(self):
        """The send buffer drained: read requests again."""
        self.output_full = False
        self._update_reading()

    def stopProducing(self):
        """The connection is gone: `connectionLost` follows."""

    def _update_reading(self):
        # a finishing connection reads on, and drops what it reads: unread requests left
        # in the socket would make the kernel reset the connection at its close, losing
        # the answers still on their way
        reading = self.finishing or not (self.paused or self.output_full)
        if reading != self.reading and self.connected and not self.released:
            self.reading = reading
            if reading:
                self.transport.resumeProducing()
            else:
                self.transport.pauseProducing()

    def finish(self):
        """Run no more requests; once the answers of those read are written, shut the
        writing down and close when the peer ends its side (or the close deadline)."""
        self.finishing = True
        self.closing = True
        self._update_reading()
        self._flush()

    def _release(self):
        """Whether the connection is open and now let go of, to be closed: it is no longer
        its transport's producer (a registered producer would keep it open)."""
        if not self.connected or self.released:
            return False
        self.released = True
        self.transport.unregisterProducer()
        return True

    def _close(self):
        """Close after what is written; a peer that does not take it within
        `request_timeout` seconds is cut off."""
        if self._release():
            if self.finishing:
                self.transport.loseWriteConnection()
            else:
                self.transport.loseConnection()
            self.close_call = self.factory.clock.callLater(self.factory.request_timeout,
                                                           self._close_overdue)

    def _close_overdue(self):
        self.close_call = None
        if self.connected:
            self.log.info("{peer} did not take its last answers in {seconds} s; closing",
                          peer=self.transport.getPeer(), seconds=self.factory.request_timeout)
            self.transport.abortConnection()

    def _drop(self):
        """Close at once: the client does not read its answers."""
        self.log.error("{peer} does not read its answers ({pending} bytes unsent); closing",
                       peer=self.transport.getPeer(),
                       pending=pending_output(self.transport))
        self.closing = True
        self.slots = []
        self.connected = False
        self.transport.abortConnection()

    # -- httptools callbacks -----------------------------------------------------------

    def _reset_message(self):
        self.in_message = False
        self.message_bytes = 0    # bytes read since the request began (after its first read)
        self.body_parts = []
        self.body_size = 0
        self.too_large = False
        self.framing = []        # the Content-Length and Transfer-Encoding headers

    def on_header(self, name, value):
        if name.lower() in _FRAMING:
            self.framing.append(b"%s: %s\r\n" % (name, value))

    def on_message_begin(self):
        self._reset_message()
        self.in_message = True
        if self.request_call is None or not self.request_call.active():
            self.request_call = self.factory.clock.callLater(self.factory.request_timeout,
                                                             self._too_slow)

    def on_body(self, body):
        if self.too_large:
            return
        self.body_size += len(body)
        if self.body_size > self.factory.max_body:
            self.too_large = True
            self.body_parts = []
            raise httptools.HttpParserError("body too large")
        self.body_parts.append(body)

    def on_message_complete(self):
        self.in_message = False
        if self.request_call is not None and self.request_call.active():
            self.request_call.cancel()
        self.request_call = None
        if self.closing:
            # read in the same segment after a refused request or `Connection: close`:
            # the original stops parsing there, and the answer could not be sent
            self._reset_message()
            return
        method = self.parser.get_method()
        keep_alive = self.parser.should_keep_alive()
        if self.framing and method == b"POST" and self.parser.should_upgrade():
            # httptools leaves the body of a request with `Connection: Upgrade` and
            # `Upgrade` headers unread (HttpParserUpgrade follows); the original serves it
            # as any other body
            self.replay = b"".join([
                b"POST / HTTP/%s\r\nConnection: %s\r\n" % (
                    self.parser.get_http_version().encode(),
                    b"keep-alive" if keep_alive else b"close")] + self.framing + [b"\r\n"])
            self._reset_message()
            return
        body = b"".join(self.body_parts)
        self._reset_message()
        if method != b"POST" or not body:
            self._reject(400, "not a POST with a body")
            return
        try:
            request_id, name, params = parse_envelope(body)
        except _BadRequest as e:
            self._reject(400, str(e))
            return
        index = self.written + len(self.slots)
        self.slots.append(None)
        if not keep_alive:
            self.closing = True
        request = JSONRPCRequest(request_id, name, params, self)
        d = defer.maybeDeferred(self.factory.dispatch, request)
        d.addErrback(self._handler_failed, request)
        d.addCallback(self._answer, index)
        if len(self.slots) >= self.factory.max_pipeline and not self.paused:
            self.paused = True
            self._update_reading()

    def _handler_failed(self, failure, request):
        self.log.failure("handler for {method} failed", failure, method=request.method)
        return 500, b""

    # -- responses ---------------------------------------------------------------------

    def _reject(self, status, why):
        self.log.info("{status} to {peer}: {why}", status=status,
                      peer=self.transport.getPeer(), why=why)
        self.slots.append(self.factory.response(status, b""))
        self.closing = True
        self._flush()

    def _answer(self, result, index):
        status, body = result
        if not self.connected:
            return
        # `index` counts every request of the connection; written ones left the front
        self.slots[index - self.written] = self.factory.response(status, body)
        self._flush()

    def _flush(self):
        if not self.connected:
            return
        out = []
        while self.slots and self.slots[0] is not None:
            out.append(self.slots.pop(0))
            self.written += 1
        if out:
            write_now(self.transport, b"".join(out))
            limit = self.factory.max_output
            # what counts is what the kernel does not take, as in the original, which sends
            # at once: not what one pass of the reactor wrote to a client that reads
            if limit and unsent_over(self.transport, limit):
                self._drop()
                return
        if self.paused and len(self.slots) < self.factory.max_pipeline // 2:
            self.paused = False
            self._update_reading()
        if self.closing and not self.slots:
            self._close()


class HTTPServerFactory(protocol.Factory):
    """Validates JSON-RPC envelopes and hands each call to the handler of its method.

    `handlers` maps a method name to `handler(request) -> (status, body)` or a Deferred of it.
    `max_output` bounds the unsent answer bytes of a connection (0: no bound).
    """

    protocol = HTTPServerProtocol
    log = Logger()

    def __init__(self, handlers, max_body=1024 * 1024, keep_alive=3600.0, request_timeout=30.0,
                 max_pipeline=256, max_output=0, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.handlers = dict(handlers)
        self.max_body = max_body
        self.keep_alive = keep_alive
        self.request_timeout = request_timeout
        self.max_pipeline = max_pipeline
        self.max_output = max_output
        self.clock = reactor
        self.connections = OpenSet()
        self.dates = _DateCache(reactor)
        self.requests = 0

    def finish(self):
        """Read no more requests on any connection and close each once the answers of
        what it sent are written; fires when every connection is closed."""
        closed = self.connections.closed()
        for connection in list(self.connections):
            connection.finish()
        return closed

    def abort(self):
        """Drop every connection at once, whatever it has not sent."""
        for connection in list(self.connections):
            if connection.connected:
                connection.transport.abortConnection()

    def dispatch(self, request):
        self.requests += 1
        handler = self.handlers.get(request.method)
        if handler is None:
            return 404, error_body(4, "method not found", request.id)
        return handler(request)

    def response(self, status, body):
        return b"".join((b"HTTP/1.1 %d %s\r\nDate: " % (status, REASONS.get(status, b"")),
                         self.dates.header(), b"\r\nContent-Length: %d\r\n\r\n" % len(body),
                         body))

