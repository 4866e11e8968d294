# -*- test-case-name: utils.test.test_rpc_server -*-
"""The RPC server: packets in, handlers called, replies out — over stream sockets and UDP.

Handlers are looked up by command number: `handler(params, request)` gets the decoded JSON
array and an `RPCRequest`; it returns the result (or a Deferred of it), raises `RPCError`
for an error reply, or returns `NO_REPLY` after taking charge of the reply itself
(`request.reply_result` / `request.reply_error`).  A result that is already JSON text can be
returned as `RawJSON(text)`.  A result that cannot be written as JSON (NaN, a lone surrogate)
is logged and answered with "internal error", as a handler's crash is.

As in the original: heartbeats (command 0) are always answered with an empty body; a body
that is not a JSON array closes the connection; an unknown command is logged and gets no
reply; with `heartbeat_check` a connection whose last heartbeat is older than its timeout
is closed (checked every second).  Replies carry the request's command, sequence, req_id,
result field and ext, and go out in the order they are produced.
"""


from twisted.internet import defer, error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from network.address import listen, listen_udp, parse_address
from network.output import close_now, unsent_over
from network.timer import Timer
from utils import rpc
from utils.jsonfmt import RawJSON

__all__ = ["RPCServerFactory", "RPCServerProtocol", "RPCDatagramProtocol", "RPCRequest",
           "RawJSON", "NO_REPLY", "listen_rpc"]

NO_REPLY = object()
HEARTBEAT = rpc.HEARTBEAT
DEFAULT_HEARTBEAT_TIMEOUT = 3.0


def hexdump(data: bytes, limit: int = 256) -> str:
    shown = data[:limit].hex(" ")
    return shown + (" ... (%d bytes)" % len(data) if len(data) > limit else "")


class RPCRequest:
    """One request being served; `reply_*` send its reply (once)."""

    __slots__ = ("packet", "peer", "_send", "replied")
    log = Logger()

    def __init__(self, packet, peer, send):
        self.packet = packet
        self.peer = peer
        self._send = send
        self.replied = False

    @property
    def command(self):
        return self.packet.command

    @property
    def sequence(self):
        return self.packet.sequence

    @property
    def req_id(self):
        return self.packet.req_id

    def reply_body(self, body: bytes):
        if self.replied:
            return
        self.replied = True
        self._send(rpc.encode_reply(self.packet, body))

    def reply_result(self, result, pretty=False):
        """Reply with `result`; one JSON cannot carry (NaN, a lone surrogate, what is not
        a JSON value) is logged and answered with an internal error, so that the client,
        and the connection's count of requests waiting, still get their reply."""
        if self.replied:
            return
        try:
            body = rpc.reply_body(self.packet.req_id, result, None, pretty)
        except Exception:
            self.log.failure("the reply to command {command} from {peer} could not be "
                             "encoded", command=self.packet.command, peer=self.peer)
            body = rpc.reply_body(self.packet.req_id, None, rpc.INTERNAL_ERROR(), pretty)
        self.reply_body(body)

    def reply_error(self, error, pretty=False):
        self.reply_body(rpc.reply_body(self.packet.req_id, None, error, pretty))


class RPCServerFactory(Factory):
    """Serves `handlers` ({command: handler}) on every connection it builds."""

    log = Logger()

    def __init__(self, handlers, max_pkg_size, heartbeat_check=True, debug=False, buf_limit=0,
                 name="rpc", clock=None):
        self.handlers = dict(handlers)
        self.max_pkg_size = max_pkg_size
        self.heartbeat_check = heartbeat_check
        self.debug = debug
        self.buf_limit = buf_limit
        self.name = name
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.connections = set()
        self._check_timer = Timer(clock, 1.0, self.check_heartbeats, repeat=True,
                                  name=name + " heartbeat check")

    def startFactory(self):
        if self.heartbeat_check:
            self._check_timer.start()

    def stopFactory(self):
        self._check_timer.stop()

    def buildProtocol(self, addr):
        protocol = RPCServerProtocol()
        protocol.factory = self
        return protocol

    def check_heartbeats(self):
        now = self.clock.seconds()
        for conn in list(self.connections):
            if now - conn.last_heartbeat > conn.heartbeat_timeout:
                self.log.warn("{name}: {peer} sent no heartbeat for {timeout} s, closing",
                              name=self.name, peer=conn.peer, timeout=conn.heartbeat_timeout)
                conn._close()

    def dispatch(self, packet, peer, send, on_bad_body):
        """Run the handler of a (non-heartbeat) request packet; whether it made a request
        (which is answered through `send`, once).  The body is read first, as the original
        reads it: one that is not a JSON array closes the connection whatever the command."""
        try:
            params = rpc.parse_params(packet.body)
        except ValueError as e:
            self.log.error("{name}: bad request body from {peer} ({error}): {dump}",
                           name=self.name, peer=peer, error=e, dump=hexdump(packet.body))
            on_bad_body()
            return False
        handler = self.handlers.get(packet.command)
        if handler is None:
            self.log.warn("{name}: unknown command {command} from {peer}", name=self.name,
                          command=packet.command, peer=peer)
            return False
        request = RPCRequest(packet, peer, send)
        pretty = self.debug
        try:
            result = handler(params, request)
        except rpc.RPCError as e:
            request.reply_error(e, pretty)
            return True
        except Exception:
            self.log.failure("{name}: command {command} failed", name=self.name,
                             command=packet.command)
            request.reply_error(rpc.INTERNAL_ERROR(), pretty)
            return True
        if result is NO_REPLY:
            return True
        if isinstance(result, defer.Deferred):
            result.addCallbacks(self._deferred_result, self._deferred_error,
                                callbackArgs=(request,), errbackArgs=(request,))
            return True
        request.reply_result(result, pretty)
        return True

    def _deferred_result(self, result, request):
        if result is not NO_REPLY:
            request.reply_result(result, self.debug)

    def _deferred_error(self, failure, request):
        if failure.check(rpc.RPCError):
            request.reply_error(failure.value, self.debug)
        else:
            self.log.failure("{name}: command {command} failed", failure, name=self.name,
                             command=request.command)
            request.reply_error(rpc.INTERNAL_ERROR(), self.debug)


@implementer(IHalfCloseableProtocol)
class RPCServerProtocol(Protocol):
    """One stream connection of an RPCServerFactory.

    A peer that shuts its side down after its requests (`shutdown(SHUT_WR)`) still gets
    their replies: the connection closes after the last one."""

    log = Logger()
    factory = None

    def connectionMade(self):
        self.decoder = rpc.StreamDecoder(self.factory.max_pkg_size)
        self.last_heartbeat = self.factory.clock.seconds()
        self.heartbeat_timeout = DEFAULT_HEARTBEAT_TIMEOUT
        self.closed = False
        self.waiting = 0            # requests read and not answered yet
        self.read_closed = False    # the peer has sent all it will send
        peer = self.transport.getPeer()
        self.peer = "%s:%s" % (peer.host, peer.port) if hasattr(peer, "port") else str(peer)
        self.factory.connections.add(self)

    def connectionLost(self, reason):
        self.closed = True
        self.factory.connections.discard(self)

    def readConnectionLost(self):
        self.read_closed = True
        if not self.waiting:
            self._finish()

    def writeConnectionLost(self):
        """Never called: this side does not shut its writing down alone."""

    def _finish(self):
        # after what is written: the replies
        if not self.closed:
            self.closed = True
            self.transport.loseConnection()

    def _close(self):
        if not self.closed:
            self.closed = True
            close_now(self.transport)

    def dataReceived(self, data):
        if self.closed:
            return
        try:
            packets, error = self.decoder.feed(data), None
        except rpc.ProtocolError as e:
            # the packets before the bad one are served, as the original serves them
            packets, error = e.packets, e
        dispatch, peer, reply, close = self.factory.dispatch, self.peer, self._reply, self._close
        for packet in packets:
            if self.closed:
                return
            if packet.command == HEARTBEAT:
                self._heartbeat(packet)
            else:
                self.waiting += 1
                if not dispatch(packet, peer, reply, close):
                    self.waiting -= 1
        if error is not None:
            self.log.error("{name}: protocol error from {peer}: {error}; closing",
                           name=self.factory.name, peer=self.peer, error=error)
            self._close()

    def _heartbeat(self, packet):
        try:
            timeout = rpc.heartbeat_timeout_of(packet.body)
        except rpc.ProtocolError as e:
            self.log.error("{name}: bad heartbeat from {peer}: {error}; closing",
                           name=self.factory.name, peer=self.peer, error=e)
            self._close()
            return
        if timeout is not None:
            self.heartbeat_timeout = timeout
        self.last_heartbeat = self.factory.clock.seconds()
        self.send(rpc.encode_reply(packet, b""))

    def _reply(self, data):
        """Write the reply of a request."""
        self.waiting -= 1
        self.send(data)
        if self.read_closed and not self.waiting:
            self._finish()

    def send(self, data):
        """Write an encoded packet."""
        if self.closed:
            return
        transport = self.transport
        transport.write(data)
        limit = self.factory.buf_limit
        # what counts is what the kernel does not take, as in the original, which sends
        # at once: the replies of this pass are not sent yet
        if limit and unsent_over(transport, limit * self.factory.max_pkg_size):
            self.log.error("{name}: {peer} does not read its replies; closing",
                           name=self.factory.name, peer=self.peer)
            self.closed = True
            transport.abortConnection()


class RPCDatagramProtocol(DatagramProtocol):
    """The same handlers over UDP: one datagram, one packet; replies to its source."""

    log = Logger()

    def __init__(self, factory: RPCServerFactory):
        self.factory = factory

    def datagramReceived(self, data, addr):
        peer = "%s:%s" % addr if isinstance(addr, tuple) else str(addr)
        if len(data) > self.factory.max_pkg_size:
            self.log.warn("{name}: dropped a datagram from {peer}: over {limit} bytes",
                          name=self.factory.name, peer=peer, limit=self.factory.max_pkg_size)
            return
        try:
            packet = rpc.decode_packet(data)
        except rpc.ProtocolError as e:
            self.log.warn("{name}: dropped a datagram from {peer}: {error}",
                          name=self.factory.name, peer=peer, error=e)
            return

        def send(data):
            # a reply no datagram can carry (past 65,507 bytes), or one the kernel refuses,
            # is told as the original tells a failed sendto: one error line, nothing more
            try:
                self.transport.write(data, addr)
            except (error.MessageLengthError, OSError) as e:
                self.log.error("{name}: reply of {size} bytes to {peer} not sent: {error}",
                               name=self.factory.name, size=len(data), peer=peer, error=e)

        if packet.command == rpc.HEARTBEAT:
            send(rpc.encode_reply(packet, b""))
            return
        self.factory.dispatch(packet, peer, send, lambda: None)


def listen_rpc(reactor, bind, factory: RPCServerFactory, read_mem=0, write_mem=0):
    """Listen on every address of `bind` (a string or a list); fires with the ports, or
    fails with the first address's error that could not be listened on, the others then
    closed again.

    `read_mem`/`write_mem` (the `svr` section's) size the sockets' buffers."""
    addresses = [bind] if isinstance(bind, str) else list(bind)
    results = []
    for address in addresses:
        addr = parse_address(address)
        if addr.is_stream:
            results.append(listen(reactor, addr, factory, read_mem, write_mem))
        else:
            # a datagram is one packet: read one byte past the largest taken, so that a
            # longer one is seen (and dropped) rather than cut short
            results.append(defer.maybeDeferred(listen_udp, reactor, addr,
                                               RPCDatagramProtocol(factory), read_mem,
                                               write_mem, max_size=factory.max_pkg_size + 1))

    def listened(outcomes):
        failures = [value for ok, value in outcomes if not ok]
        if not failures:
            return [port for _, port in outcomes]
        closing = [defer.maybeDeferred(port.stopListening) for ok, port in outcomes if ok]
        return defer.DeferredList(closing).addCallback(lambda _: failures[0])

    return defer.DeferredList(results, consumeErrors=True).addCallback(listened)
