# -*- test-case-name: network.test.test_client -*-
"""A stream client that keeps one connection up across several backend addresses.

The order of addresses follows the original: the first attempt goes to the first address;
after every failed attempt or lost connection the client moves on to the next address at
once, and after the last one it starts again from the first after a pause of
`reconnect_timeout` seconds.  With a single address it always pauses before retrying, except
after `reconnect()` (a backend whose heartbeats stopped), which connects again at once.  A
connection attempt that has not completed within `reconnect_timeout` is abandoned and the
next one made at once, as the original restarts it.

`state` is one of "stopped", "connecting", "connected", "waiting" (pausing before the next
attempt).  `on_connect(protocol)` and `on_disconnect(protocol, reason)` run on the reactor
thread.  Failed attempts and lost connections are warnings, or, given an `outage`
(`utils.outage.Outage`), told through it as this client's (`who`): its owner says when the
backend answers again.
"""

from twisted.internet import defer
from twisted.internet.error import TimeoutError
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel

from network.address import client_endpoint, parse_address, set_buffers
from network.output import close_now

__all__ = ["ReconnectingClient"]


class ReconnectingClient:
    log = Logger()

    def __init__(self, reactor, addresses, protocol_factory, reconnect_timeout=1.0,
                 on_connect=None, on_disconnect=None, name="", read_mem=0, write_mem=0,
                 outage=None):
        if isinstance(addresses, (str, bytes)):
            addresses = [addresses]
        self.addresses = [str(parse_address(a)) for a in addresses]
        if not self.addresses:
            raise ValueError("a client needs at least one address")
        self._reactor = reactor
        self._protocol_factory = protocol_factory
        self.reconnect_timeout = reconnect_timeout if reconnect_timeout > 0 else 1.0
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self.buffers = {"read_mem": read_mem, "write_mem": write_mem}
        self.name = name or self.addresses[0]
        self.outage = outage
        self.state = "stopped"
        self.protocol = None
        self._index = 0          # next address to try
        self._current = 0        # address of the attempt or connection in progress
        self._attempt = None     # Deferred of the connection attempt in progress
        self._wait = None        # DelayedCall of the pause before the next attempt
        self._stopped = None     # Deferred fired once stopped and disconnected
        self._closing = None     # the connection stop() dropped, until it is gone
        self._at_once = False    # the next attempt without a pause (see `reconnect`)

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    @property
    def current_address(self) -> str:
        return self.addresses[self._current]

    def start(self):
        if self.state != "stopped":
            return
        self._index = 0
        self._connect()

    def stop(self):
        """Stop reconnecting and drop the connection; fires when disconnected."""
        self.state = "stopped"
        if self._wait is not None:
            self._wait.cancel()
            self._wait = None
        if self._attempt is not None:
            attempt, self._attempt = self._attempt, None
            attempt.cancel()
        protocol, self.protocol = self.protocol, None
        if protocol is not None and protocol.transport is not None:
            # a start() before it is gone connects anew beside it
            self._closing = protocol
            stopped = self._stopped = defer.Deferred()
            close_now(protocol.transport)
            return stopped
        return defer.succeed(None)

    def reconnect(self):
        """Drop the current connection (if any) and connect again at once, to the next
        address (the first after the last), as the original does when a backend stops
        answering its heartbeats.  What the peer has not taken is dropped with the
        connection (a peer that stopped reading would keep it waiting to close for ever)."""
        if self.protocol is not None and self.protocol.transport is not None:
            self._at_once = True
            close_now(self.protocol.transport)

    # -- internals -------------------------------------------------------------------

    def _connect(self):
        self._wait = None
        self._current = self._index
        self._index += 1
        self.state = "connecting"
        address = self.addresses[self._current]
        endpoint = client_endpoint(self._reactor, address, timeout=self.reconnect_timeout)
        factory = Factory.forProtocol(self._protocol_factory) \
            if isinstance(self._protocol_factory, type) else _CallableFactory(self._protocol_factory)
        attempt = endpoint.connect(_Notifying(factory, self))
        self._attempt = attempt
        attempt.addCallbacks(self._connected, self._failed, errbackArgs=(address,))

    def _connected(self, protocol):
        self._attempt = None
        self.protocol = protocol
        handle = getattr(protocol.transport, "getHandle", None)
        if handle is not None and (self.buffers["read_mem"] or self.buffers["write_mem"]):
            set_buffers(handle(), **self.buffers)
        no_delay = getattr(protocol.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)      # as `network.address.set_no_delay`
        self.state = "connected"
        # each new connection during an outage (a backend frozen: its heartbeats stop, the
        # connection is made again) is news only at debug level
        quiet = self.outage is not None and self.outage.since is not None
        self.log.emit(LogLevel.debug if quiet else LogLevel.info,
                      "{name}: connected to {address}", name=self.name,
                      address=self.current_address)
        if self._on_connect is not None:
            try:
                self._on_connect(protocol)
            except Exception:
                self.log.failure("{name}: on_connect failed", name=self.name)

    def _failed(self, reason, address):
        if self._attempt is None and self.state == "stopped":
            return None  # cancelled by stop()
        self._attempt = None
        self._trouble("cannot connect to %s: %s" % (address, reason.getErrorMessage()))
        if reason.check(TimeoutError):
            self._at_once = True
        self._schedule()
        return None

    def _lost(self, protocol, reason):
        if protocol is self._closing:
            self._closing = None
            self._disconnected(protocol, reason)
            stopped, self._stopped = self._stopped, None
            if stopped is not None:
                stopped.callback(None)
            return
        if protocol is not self.protocol:
            return
        self.protocol = None
        self._disconnected(protocol, reason)
        self._trouble("connection to %s lost: %s" % (self.current_address,
                                                     reason.getErrorMessage()))
        self._schedule()

    def _trouble(self, problem):
        if self.outage is not None:
            self.outage.failed(problem, self)
        else:
            self.log.warn("{name}: {problem}", name=self.name, problem=problem)

    def _disconnected(self, protocol, reason):
        if self._on_disconnect is not None:
            try:
                self._on_disconnect(protocol, reason)
            except Exception:
                self.log.failure("{name}: on_disconnect failed", name=self.name)

    def _schedule(self):
        if self.state == "stopped":
            return
        at_once, self._at_once = self._at_once, False
        if at_once and self._index >= len(self.addresses):
            self._index = 0
        if (at_once or len(self.addresses) > 1) and self._index < len(self.addresses):
            self._connect()
            return
        self._index = 0
        self.state = "waiting"
        self._wait = self._reactor.callLater(self.reconnect_timeout, self._connect)


class _CallableFactory(Factory):
    def __init__(self, make):
        self._make = make

    def buildProtocol(self, addr):
        return self._make()


class _Notifying(Factory):
    """Wraps the protocol factory so the client hears when a connection is lost."""

    noisy = False       # its start and stop at each try would fill the log while a peer is away

    def __init__(self, factory, client):
        self._factory = factory
        self._client = client

    def buildProtocol(self, addr):
        protocol = self._factory.buildProtocol(addr)
        if protocol is None:
            return None
        lost = protocol.connectionLost
        client = self._client

        def connection_lost(reason):
            try:
                lost(reason)
            finally:
                client._lost(protocol, reason)

        protocol.connectionLost = connection_lost
        return protocol
