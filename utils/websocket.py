# -*- test-case-name: utils.test.test_websocket -*-
"""The WebSocket JSON-RPC server of accessws (the original's `utils/ut_ws_svr`), on autobahn.

Every text (or binary) message is one request `{"id": <int>, "method": <str>, "params": [...]}`.
The handler registered for the method is called as `handler(session, params)` (or, when
decorated with `@with_request`, as `handler(session, params, request)`); it returns the
result, a Deferred of it or a coroutine, raises `RPCError` for an error reply, or returns
`NO_REPLY` after taking charge of the reply through the `WSRequest`.  A result that is
already JSON text can be returned as `RawJSON(text)`.

As in the original (spec accessws.md §2-3):

    ==================================================  ==================================
    reply                                               {"error": null, "result": r, "id": i}
    error reply                                         {"error": {"code": c, "message": m},
                                                         "result": null, "id": i}
    notification (`session.notify`, `broadcast`)        {"method": m, "params": p, "id": null}
    message not JSON / not an object / `id` not an      logged, connection closed, no reply
    integer / `method` not a string / `params` not
    an array
    unknown method                                      logged, no reply, connection kept
    frame or message over `max_pkg_size`                connection dropped
    nothing received for `keep_alive` s                 connection closed (checked every 60 s)
    client offers subprotocols without ours, or         handshake refused
    `origin` set and the Origin header does not
    end with it
    ==================================================  ==================================

Texts are written the way jansson writes them (`utils.jsonfmt`), keys in the order above.

Output is bounded two ways.  With `buf_limit` (the config key: a count of `max_pkg_size`
buffers, 0 = no limit) a session whose unsent output exceeds `buf_limit * max_pkg_size`
bytes is dropped at once.  And each session watches its transport as an `IPushProducer`:
the transport pauses it when more than its high-water mark (64 KiB for TCP) is waiting,
resumes it once drained; a session paused for `send_timeout` seconds is dropped.

Handlers get a `WSSession` per connection: `session.data` is a dict for later modules (the
authenticated user, subscriptions), `session.client_ip` the address used in logs (taken
from the proxy headers as the original does), `session.session_id` a number unique within
the factory, `session.notify(method, params)` pushes a notification (the protocol has the
same `notify`).  `factory.sessions` holds the open sessions; `on_open(session)` and
`on_close(session)` are called when one opens or closes (a session being closed is no
longer `is_open`, and leaves `sessions` when its connection is lost); `factory.broadcast(
method, params, sessions=None)` frames a notification once and sends it to each open one.

A server that stops calls `factory.finish()`: no further request is run (those that come are
dropped unanswered), and once the requests under way (`factory.under_way`) are answered,
every connection is closed with a close frame saying the server goes away (1001), after
those answers; it fires when the last connection is gone.  `factory.abort()` drops those
left at once.

Autobahn's own timers (opening handshake timeout, auto-ping) run on txaio's global reactor;
the timers of this module (idle check, send stall) use the factory's.  Autobahn's closing
handshake timeout is off: the only close this server starts with a close frame is `finish`'s,
bounded by its caller.
Daemons listen with `strports.service(network.address.server_description(bind), factory)`
so that a port that cannot be bound stops twistd; `listen_ws` is for tools and tests.
"""

import inspect
import itertools
import re

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from network.address import AddressError, listen, parse_address
from network.output import flush, pending_output, unsent_over, write_now
from network.timer import Timer
from network.underway import OpenSet, UnderWay
from utils import rpc
from utils.jsonfmt import RawJSON, dumps, loads
from utils.rpc_server import NO_REPLY

__all__ = ["WSServerFactory", "WSServerProtocol", "WSSession", "WSRequest", "BadRequest",
           "RawJSON", "NO_REPLY", "with_request", "parse_request", "reply_text", "notify_text",
           "listen_ws", "IDLE_CHECK_INTERVAL"]

log = Logger()

IDLE_CHECK_INTERVAL = 60.0
_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED
_CONNECTING = (WebSocketProtocol.STATE_CONNECTING, WebSocketProtocol.STATE_PROXY_CONNECTING)
# Headers naming the client behind a proxy, in the order the original consults them.
_CLIENT_IP_HEADERS = ("x-connecting-ip", "x-forwarded-for", "x-proxy-ip", "x-real-ip")


# -- the message codec (no I/O) ------------------------------------------------------------

class BadRequest(ValueError):
    """A message that is not a request; the session that sent it is closed."""


def parse_request(payload: bytes):
    """`(id, method, params)` of one request message; raises BadRequest if it is not one."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("message is not UTF-8") from None
    try:
        value = loads(text)
    except ValueError as e:
        raise BadRequest("message is not JSON: %s" % e) from None
    if not isinstance(value, dict):
        raise BadRequest("message is not a JSON object")
    request_id = value.get("id")
    if request_id.__class__ is not int:
        raise BadRequest("id is not an integer")
    method = value.get("method")
    if not isinstance(method, str):
        raise BadRequest("method is not a string")
    params = value.get("params")
    if not isinstance(params, list):
        raise BadRequest("params is not an array")
    return request_id, method, params


def reply_text(request_id: int, result=None, error=None) -> bytes:
    """The reply to request `request_id`: `error` (an RPCError) or else `result`."""
    if error is not None:
        return rpc.reply_body(request_id, None, error)
    if result.__class__ is RawJSON:
        return b'{"error": null, "result": %s, "id": %d}' % (result.text, request_id)
    return rpc.reply_body(request_id, result)


def notify_text(method: str, params) -> bytes:
    """A notification pushed to a session."""
    return dumps({"method": method, "params": params, "id": None}).encode()


def with_request(handler):
    """Mark a handler that is called as `handler(session, params, request)`."""
    handler.wants_request = True
    return handler


def _log_text(payload, limit=200):
    text = payload[:limit].decode("utf-8", "replace")
    return text + ("... (%d bytes)" % len(payload) if len(payload) > limit else "")


# -- requests, sessions, factory -----------------------------------------------------------

class WSRequest:
    """One request being served; the `reply_*` methods answer it (once)."""

    __slots__ = ("session", "id", "method", "params", "replied")

    def __init__(self, session, request_id, method, params):
        self.session = session
        self.id = request_id
        self.method = method
        self.params = params
        self.replied = False

    def reply_text(self, text) -> bool:
        """Send `text` (bytes or str) as the whole reply, verbatim; False if not sent."""
        if self.replied:
            return False
        self.replied = True
        return self.session.send_text(text)

    def reply_result(self, result) -> bool:
        try:
            text = reply_text(self.id, result)
        except (TypeError, ValueError):
            log.failure("{name}: result of method {method} is not JSON",
                        name=self.session.factory.name, method=self.method)
            text = reply_text(self.id, error=rpc.INTERNAL_ERROR())
        return self.reply_text(text)

    def reply_error(self, error: rpc.RPCError) -> bool:
        return self.reply_text(reply_text(self.id, error=error))

    def _deferred_result(self, result):
        if result is not NO_REPLY:
            self.reply_result(result)

    def _deferred_error(self, failure):
        if failure.check(rpc.RPCError):
            self.reply_error(failure.value)
            return
        log.failure("{name}: method {method} failed", failure,
                    name=self.session.factory.name, method=self.method)
        self.reply_error(rpc.INTERNAL_ERROR())


class WSSession:
    """What handlers see of one open connection: its protocol, identity and `data`."""

    __slots__ = ("protocol", "session_id", "client_ip", "data")

    def __init__(self, protocol, session_id, client_ip):
        self.protocol = protocol
        self.session_id = session_id
        self.client_ip = client_ip
        self.data = {}

    @property
    def is_open(self) -> bool:
        return self.protocol.state == _OPEN

    @property
    def factory(self):
        return self.protocol.factory

    def send_text(self, text) -> bool:
        """Send one text message (bytes or str); False when the session is not open."""
        return self.protocol.send_text(text)

    def notify(self, method: str, params) -> bool:
        """Push `{"method": method, "params": params, "id": null}`; False when not open."""
        return self.protocol.send_text(notify_text(method, params))

    def close(self):
        """Close the connection after what is already written, without a close frame."""
        self.protocol.close()

    def drop(self, reason: str):
        """Abort the connection at once, discarding unsent output."""
        self.protocol.drop(reason)

    def __repr__(self):
        return "<WSSession #%s %s>" % (self.session_id, self.client_ip)


@implementer(IPushProducer)
class _OutputWatch:
    """Registered on a transport: drops the connection if its output stays backed up."""

    def __init__(self, protocol):
        self.protocol = protocol
        self.stalled = None

    def pauseProducing(self):
        timeout = self.protocol.factory.send_timeout
        if self.stalled is None and timeout > 0:
            self.stalled = self.protocol.factory.reactor.callLater(timeout, self._expired)

    def resumeProducing(self):
        self.cancel()

    def stopProducing(self):
        self.cancel()

    def cancel(self):
        if self.stalled is not None:
            if self.stalled.active():
                self.stalled.cancel()
            self.stalled = None

    def _expired(self):
        self.stalled = None
        protocol = self.protocol
        log.error("{name}: {peer} has not read its messages for {timeout} s; closing",
                  name=protocol.factory.name, peer=protocol.session.client_ip,
                  timeout=protocol.factory.send_timeout)
        protocol.drop("peer does not read")


class WSServerProtocol(WebSocketServerProtocol):
    """One connection of a WSServerFactory; `self.session` is what handlers see.

    (Autobahn owns `self.data`, its input buffer: per-session state lives on the session.)
    """

    factory = None
    session = None
    last_activity = 0.0
    _output = None

    def connectionMade(self):
        factory = self.factory
        self.last_activity = factory.reactor.seconds()
        super().connectionMade()
        try:
            peer = self.transport.getPeer()
            self.session = WSSession(self, next(factory._ids),
                                     getattr(peer, "host", None) or self.peer)
            factory._connections.add(self)
            self._output = _OutputWatch(self)
            try:
                self.transport.registerProducer(self._output, True)
            except RuntimeError:
                # The transport already has a producer (a hijacked HTTP channel): only the
                # byte limit guards this connection's output.
                self._output = None
        except Exception:
            log.failure("{name}: setting up a connection failed", name=factory.name)
            self.drop("setup failed")

    def connectionLost(self, reason):
        try:
            super().connectionLost(reason)
        finally:
            if self._output is not None:
                self._output.cancel()
            self.factory._connection_closed(self)

    def dataReceived(self, data):
        self.last_activity = self.factory.reactor.seconds()
        super().dataReceived(data)

    def onConnect(self, request):
        try:
            headers = request.headers
            for name in _CLIENT_IP_HEADERS:
                value = headers.get(name, "").split(",")[0].strip()
                if value:
                    self.session.client_ip = value
                    break
            origin = self.factory.origin
            if origin and not headers.get("origin", "").endswith(origin):
                raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
            # the offered subprotocols separated by commas or spaces, as the original reads
            # them
            offered = [p for p in re.split(r"[, ]+", headers.get("sec-websocket-protocol", ""))
                       if p]
            if not offered:
                return None
            if self.factory.subprotocol in offered:
                self.websocket_protocols = offered
                return self.factory.subprotocol
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, "unsupported subprotocol")
        except ConnectionDeny as e:
            log.warn("{name}: refused a WebSocket handshake from {peer}: {reason}",
                     name=self.factory.name, peer=self.session.client_ip, reason=e.reason)
            raise
        except Exception:
            log.failure("{name}: handshake from {peer} failed", name=self.factory.name,
                        peer=self.session.client_ip)
            raise ConnectionDeny(ConnectionDeny.INTERNAL_SERVER_ERROR) from None

    def onOpen(self):
        try:
            self.factory._session_opened(self.session)
        except Exception:
            log.failure("{name}: opening session of {peer} failed", name=self.factory.name,
                        peer=self.session.client_ip)
            self.close()

    def onMessage(self, payload, isBinary):
        if self.state != _OPEN:
            return
        try:
            request_id, method, params = parse_request(payload)
        except BadRequest as e:
            log.error("{name}: bad request from {peer} ({error}): {text}; closing",
                      name=self.factory.name, peer=self.session.client_ip, error=e,
                      text=_log_text(payload))
            self.close()
            return
        self.factory.dispatch(self.session, request_id, method, params)

    def send_text(self, text) -> bool:
        """Send one text message (bytes or str); False when the connection is not open."""
        if self.state != _OPEN:
            return False
        # Prepared, because sendMessage applies maxMessagePayloadSize (our limit on what
        # clients send) to what we send too.
        payload = text.encode() if isinstance(text, str) else text
        self.factory.release(self)   # pushes held for this connection go first
        self.sendPreparedMessage(self.factory.prepareMessage(payload))
        self._check_output()
        return True

    def send_prepared(self, prepared) -> bool:
        """Send a message made by `factory.prepareMessage`; False when not open.

        Pushes go through here: without compression or autobahn's chopped sending, the
        prepared frame is written straight to the transport (see `write_now`), or held for
        the factory's `push_window` so that the pushes of one polling round leave together.
        """
        if self.state != _OPEN:
            return False
        if self._perMessageCompress is None and not self.send_queue and not self.logOctets:
            if self.factory.push_window:
                self.factory.hold(self, prepared.payloadHybi)
                return True
            write_now(self.transport, prepared.payloadHybi)
        else:
            self.factory.release(self)
            self.sendPreparedMessage(prepared)
        self._check_output()
        return True

    def notify(self, method: str, params) -> bool:
        """Push `{"method": method, "params": params, "id": null}`; False when not open."""
        return self.send_text(notify_text(method, params))

    def close(self):
        """Close the connection without a close frame, at once, as the original closes a
        session: what the kernel takes now is sent, the rest dropped (a peer that does not
        read would hold it open for ever, the checks that would drop it later finding it
        closed already)."""
        if self.state != _CLOSED:
            self.factory.release(self)
            self.wasNotCleanReason = "closed by the server"
            flush(self.transport)
            self.dropConnection(abort=bool(pending_output(self.transport)))
        else:
            self._abort_closed()

    def going_away(self):
        """Close with a close frame saying the server goes away (1001), sent after what is
        already written: the client's answering close frame ends the connection.  One still
        in its opening handshake is dropped; one closing already is left to end."""
        if self.state == _OPEN:
            self.factory.release(self)
            # autobahn's sendClose takes 1000 and 3000-4999 only; 1001 is the code for this
            self.sendCloseFrame(WebSocketProtocol.CLOSE_STATUS_CODE_GOING_AWAY)
        elif self.state in _CONNECTING:
            self.drop("server stopping")

    def drop(self, reason: str):
        """Abort the connection at once, discarding unsent output."""
        if self.state != _CLOSED:
            self.wasClean = False
            self.wasNotCleanReason = reason
            self.dropConnection(abort=True)
        else:
            self._abort_closed()

    def _abort_closed(self):
        # closed by the protocol, the socket still open behind output a peer does not take
        transport = self.transport
        if transport is not None and transport.connected and hasattr(transport,
                                                                     "abortConnection"):
            transport.abortConnection()

    def _check_output(self):
        limit = self.factory.max_output
        if limit and self.state != _CLOSED:
            # what the kernel does not take, as the original counts it, not what one turn
            # of the reactor wrote to a client that reads
            if unsent_over(self.transport, limit):
                pending = pending_output(self.transport)
                log.error("{name}: {peer} does not read its messages ({pending} bytes "
                          "pending); closing", name=self.factory.name,
                          peer=self.session.client_ip, pending=pending)
                self.drop("output buffer full")


def _write_frames(transport, frames):
    """Write push frames, shared by every connection they go to: joined into one send when
    the transport has nothing waiting, else queued as they are (a copy each for thousands
    of connections that do not read took gigabytes)."""
    if len(frames) == 1:
        write_now(transport, frames[0])
    elif pending_output(transport):
        transport.writeSequence(frames)
    else:
        write_now(transport, b"".join(frames))


class WSServerFactory(WebSocketServerFactory):
    """Serves `handlers` ({method name: handler}) on every WebSocket connection it builds."""

    protocol = WSServerProtocol

    def __init__(self, handlers, max_pkg_size, keep_alive=3600, ping_interval=0,
                 ping_timeout=0, buf_limit=0, send_timeout=30.0, subprotocol="chat",
                 origin="", on_open=None, on_close=None, name="ws", reactor=None,
                 push_window=0.0):
        super().__init__(server=None, reactor=reactor)
        self.handlers = dict(handlers)
        self.max_pkg_size = max_pkg_size
        self.keep_alive = keep_alive
        self.max_output = buf_limit * max_pkg_size
        self.send_timeout = send_timeout
        self.subprotocol = subprotocol
        self.origin = origin
        self.on_open = on_open
        self.on_close = on_close
        self.name = name
        self.push_window = push_window
        self.sessions = set()
        self._connections = OpenSet()
        self.under_way = UnderWay()   # requests whose answer is awaited
        self.finishing = False        # the server stops: no further request is run
        self._held = {}          # protocol -> push frames waiting for the window to close
        self._held_call = None
        self._ids = itertools.count(1)
        self._idle_timer = Timer(self.reactor, IDLE_CHECK_INTERVAL, self.check_idle,
                                 repeat=True, name=name + " idle check")
        # no closing handshake timer of autobahn's: the caller of `finish` bounds that close
        self.setProtocolOptions(
            maxFramePayloadSize=max_pkg_size, maxMessagePayloadSize=max_pkg_size,
            autoPingInterval=ping_interval, autoPingTimeout=ping_timeout,
            closeHandshakeTimeout=0, webStatus=False, allowNullOrigin=True, versions=[13])

    def startFactory(self):
        if self.keep_alive > 0:
            self._idle_timer.start()

    def stopFactory(self):
        self._idle_timer.stop()
        if self._held_call is not None:
            self._held_call.cancel()
            self._held_call = None
        self._held.clear()

    # -- pushes held for `push_window` -----------------------------------------------------
    #
    # One send per connection and window instead of one per push: at thousands of
    # connections the kernel's work per send is most of a fan-out's cost, and the polls of
    # the market-data families (same interval) answer within a few milliseconds of each other.

    def hold(self, protocol, frame):
        held = self._held.get(protocol)
        if held is None:
            self._held[protocol] = [frame]
        else:
            held.append(frame)
        if self._held_call is None:
            self._held_call = self.reactor.callLater(self.push_window, self._send_held)

    def release(self, protocol):
        """Send what is held for `protocol` now (before anything else is sent to it)."""
        if self._held:
            frames = self._held.pop(protocol, None)
            if frames:
                _write_frames(protocol.transport, frames)

    def send_held(self):
        """Send every held push now, without waiting for the window to close."""
        if self._held_call is not None:
            self._held_call.cancel()
            self._send_held()

    def _send_held(self):
        self._held_call = None
        held, self._held = self._held, {}
        for protocol, frames in held.items():
            if protocol.state == _OPEN:
                _write_frames(protocol.transport, frames)
                protocol._check_output()

    def check_idle(self):
        """Close every connection that received nothing for `keep_alive` seconds."""
        now = self.reactor.seconds()
        for conn in list(self._connections):
            if now - conn.last_activity > self.keep_alive:
                log.warn("{name}: {peer} idle for {idle:.0f} s; closing", name=self.name,
                         peer=conn.session.client_ip, idle=now - conn.last_activity)
                conn.close()

    def finish(self):
        """Run no further request; once those under way are answered, close every
        connection (`going_away`); fires when every connection is closed."""
        self.finishing = True
        if not self._connections:
            return defer.succeed(None)
        closed = self._connections.closed()
        self.under_way.ended().addCallback(lambda _: self._going_away())
        return closed

    def _going_away(self):
        for conn in list(self._connections):
            conn.going_away()

    def abort(self) -> int:
        """Drop every connection at once, whatever it has not sent; returns how many."""
        connections = list(self._connections)
        for conn in connections:
            conn.drop("server stopped")
        return len(connections)

    def dispatch(self, session, request_id, method, params):
        """Run the handler of one request."""
        if self.finishing:
            # the server stops: what the client sends now is read and dropped
            return
        handler = self.handlers.get(method)
        if handler is None:
            log.warn("{name}: unknown method {method!r} from {peer}", name=self.name,
                     method=method, peer=session.client_ip)
            return
        request = WSRequest(session, request_id, method, params)
        try:
            if getattr(handler, "wants_request", False):
                result = handler(session, params, request)
            else:
                result = handler(session, params)
            if inspect.iscoroutine(result):
                result = defer.Deferred.fromCoroutine(result)
        except rpc.RPCError as e:
            request.reply_error(e)
            return
        except Exception:
            log.failure("{name}: method {method} failed", name=self.name, method=method)
            request.reply_error(rpc.INTERNAL_ERROR())
            return
        if isinstance(result, defer.Deferred):
            result.addCallbacks(request._deferred_result, request._deferred_error)
            # counted until its answer is written
            self.under_way.track(result)
        elif result is not NO_REPLY:
            request.reply_result(result)

    def broadcast(self, method: str, params, sessions=None) -> int:
        """Notify every open session (or those of `sessions`); returns how many were sent."""
        targets = self.sessions if sessions is None else sessions
        prepared = None
        sent = 0
        for session in list(targets):
            if not session.is_open:
                continue
            if prepared is None:
                prepared = self.prepareMessage(notify_text(method, params))
            if session.protocol.send_prepared(prepared):
                sent += 1
        return sent

    def _session_opened(self, session):
        self.sessions.add(session)
        log.debug("{name}: session {id} of {peer} open", name=self.name,
                  id=session.session_id, peer=session.client_ip)
        if self.on_open is not None:
            self.on_open(session)

    def _connection_closed(self, protocol):
        self._connections.discard(protocol)
        self._held.pop(protocol, None)
        session = protocol.session
        if session in self.sessions:
            self.sessions.discard(session)
            if self.on_close is not None:
                try:
                    self.on_close(session)
                except Exception:
                    log.failure("{name}: closing session of {peer} failed", name=self.name,
                                peer=session.client_ip)
        self._connections.settle()


async def _listen_all(reactor, addresses, factory):
    ports = []
    try:
        for address in addresses:
            ports.append(await listen(reactor, address, factory))
    except BaseException:
        for port in ports:
            await defer.maybeDeferred(port.stopListening)
        raise
    return ports


def listen_ws(factory: WSServerFactory, bind):
    """Listen on every stream address of `bind` (a string or a list of them).

    Addresses are checked first (AddressError); the Deferred fires with the listening ports,
    or fails (after closing the ports already open) when one cannot be bound.
    """
    addresses = [bind] if isinstance(bind, str) else list(bind)
    parsed = [parse_address(address) for address in addresses]
    for addr in parsed:
        if addr.kind not in ("tcp", "stream"):
            raise AddressError("cannot serve WebSocket on %r (use tcp@ or stream@)" % str(addr))
    return defer.Deferred.fromCoroutine(_listen_all(factory.reactor, parsed, factory))

