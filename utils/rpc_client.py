# -*- test-case-name: utils.test.test_rpc_client -*-
"""The RPC client the gateways use to reach a backend.

One connection at a time, kept up across the backend's addresses by a
`network.client.ReconnectingClient`.  Every second a heartbeat goes out; when no heartbeat
reply has come within `heartbeat_timeout` the connection is dropped and the next address
tried.  Requests are matched to replies by their sequence number through a
`network.state.StateTable`, which also times them out.

`call(command, params, timeout)` fires with the decoded reply object
(`{"error": ..., "result": ..., "id": ...}`); `call_raw` with the reply body's bytes.  A
call made while not connected fails at once with `NotConnected`, and one whose packet would
exceed `max_request_size` with `RequestTooLarge`, unsent; one whose reply does not
come in time fails with `RPCTimeout`.  Requests in flight on a connection that is lost fail
at once with `ConnectionLost` rather than waiting for their timeout.

With `buf_limit` (the config key: a count of `max_pkg_size` buffers, 0 = no limit), a
backend that leaves more than `buf_limit * max_pkg_size` bytes of requests unread is
dropped, as the original drops a session whose send buffers run out: the connection is
closed, its requests fail with `ConnectionLost`, and the next address is tried.
"""

import json

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from network.address import buffer_sizes
from network.client import ReconnectingClient
from network.output import close_now, unsent_over, write_now
from network.state import StateTable
from network.timer import Timer
from utils import rpc
from utils.outage import Outage, on_log

__all__ = ["RPCClient", "NotConnected", "RPCTimeout", "ConnectionLost", "RequestTooLarge"]


class NotConnected(Exception):
    """The backend is not connected."""


class RequestTooLarge(Exception):
    """A request over the client's `max_request_size`, which the backend would not take."""


class RPCTimeout(Exception):
    """No reply within the request's timeout."""


class ConnectionLost(Exception):
    """The connection carrying the request was lost before its reply came."""


class _ClientProtocol(Protocol):
    log = Logger()

    def __init__(self, client):
        self.client = client
        self.decoder = rpc.StreamDecoder(client.max_pkg_size)

    def dataReceived(self, data):
        try:
            packets, error = self.decoder.feed(data), None
        except rpc.ProtocolError as e:
            packets, error = e.packets, e      # the replies before the bad bytes count
        for packet in packets:
            self.client._packet_received(self, packet)
        if error is not None:
            self.log.error("{name}: protocol error from the backend: {error}; reconnecting",
                           name=self.client.name, error=error)
            close_now(self.transport)


class RPCClient:
    log = Logger()

    def __init__(self, reactor, name, addresses, max_pkg_size, heartbeat_timeout=3.0,
                 reconnect_timeout=1.0, read_mem=0, write_mem=0, max_request_size=0,
                 buf_limit=0, outage=None):
        self.reactor = reactor
        self.name = name
        self.max_pkg_size = max_pkg_size
        self.max_output = buf_limit * max_pkg_size      # 0: no bound
        self.max_request_size = max_request_size        # 0: no bound
        if not heartbeat_timeout or heartbeat_timeout <= 0:
            heartbeat_timeout = 3.0
        self.heartbeat_timeout = min(max(heartbeat_timeout, 2.0), 600.0)
        # the backend away (refused, lost, its heartbeats stopped) told as an outage
        # (`utils.outage`): not a line for each attempt to connect again, every second; it
        # ends when the backend answers.  Clients of one backend may share it (`outage`).
        self.outage = outage or Outage(name, on_log(self.log), clock=reactor.seconds)
        self._client = ReconnectingClient(reactor, addresses, lambda: _ClientProtocol(self),
                                          reconnect_timeout, self._on_connect,
                                          self._on_disconnect, name, read_mem, write_mem,
                                          self.outage)
        self._states = StateTable(reactor, self._on_timeout)
        self._heartbeat = Timer(reactor, 1.0, self._send_heartbeat, repeat=True,
                                name=name + " heartbeat")
        self._last_heartbeat = 0.0
        self._heartbeat_packet = rpc.encode(rpc.heartbeat_request(self.heartbeat_timeout))

    @classmethod
    def for_backend(cls, reactor, section, name=None, outage=None):
        """The client of the backend a gateway's config section describes (`name` in the
        log, by default the section's)."""
        return cls(reactor, name or section["name"], list(section["addr"]),
                   section["max_pkg_size"], section["heartbeat_timeout"],
                   section["reconnect_timeout"], max_request_size=section["max_request_size"],
                   buf_limit=section["buf_limit"], outage=outage, **buffer_sizes(section))

    # -- lifecycle ------------------------------------------------------------------

    def start(self):
        self._client.start()
        self._heartbeat.start()

    def stop(self):
        self._heartbeat.stop()
        return self._client.stop()

    @property
    def connected(self) -> bool:
        return self._client.connected

    @property
    def in_flight(self) -> int:
        return len(self._states)

    # -- calls ----------------------------------------------------------------------

    def call_raw(self, command: int, body: bytes, timeout: float, req_id: int = 0):
        """Send a request body; fires with the reply body (bytes)."""
        if self.max_request_size and rpc.HEADER_SIZE + len(body) > self.max_request_size:
            return defer.fail(RequestTooLarge(
                "request of %d bytes to %s over max_request_size %d"
                % (rpc.HEADER_SIZE + len(body), self.name, self.max_request_size)))
        protocol = self._client.protocol
        if protocol is None or not self._client.connected:
            return defer.fail(NotConnected("%s is not connected" % self.name))
        d = defer.Deferred()
        sequence = self._states.add((d, protocol), timeout)
        packet = rpc.Packet(command, rpc.REQUEST, sequence, req_id, body)
        self._send(protocol, rpc.encode(packet))
        return d

    def call(self, command: int, params, timeout: float, req_id: int = 0):
        """Send `params` (a list); fires with the decoded reply object."""
        body = json.dumps(params, ensure_ascii=False, separators=(",", ":")).encode()
        return self.call_raw(command, body, timeout, req_id).addCallback(json.loads)

    # -- internals ------------------------------------------------------------------

    def _packet_received(self, protocol, packet):
        self.outage.succeeded(self._client)
        if packet.command == rpc.HEARTBEAT:
            self._last_heartbeat = self.reactor.seconds()
            return
        entry = self._states.pop(packet.sequence)
        if entry is None:
            # most often a reply that came after its call timed out, which the caller has
            # told of already: ignored, as the original ignores it
            self.log.debug("{name}: reply to unknown or expired request {sequence}",
                           name=self.name, sequence=packet.sequence)
            return
        entry[0].callback(packet.body)

    def _send_heartbeat(self):
        protocol = self._client.protocol
        if protocol is None or not self._client.connected:
            return
        if self.reactor.seconds() - self._last_heartbeat > self.heartbeat_timeout:
            self.outage.failed("no heartbeat from %s for %s s; reconnecting"
                               % (self._client.current_address, self.heartbeat_timeout),
                               self._client)
            self._client.reconnect()
            return
        self._send(protocol, self._heartbeat_packet)

    def _send(self, protocol, data):
        transport = protocol.transport
        write_now(transport, data)
        if self.max_output and unsent_over(transport, self.max_output):
            self.log.error("{name}: {address} does not read its requests (over buf_limit); "
                           "reconnecting", name=self.name,
                           address=self._client.current_address)
            close_now(transport)

    def _on_connect(self, protocol):
        self._last_heartbeat = self.reactor.seconds()

    def _on_disconnect(self, protocol, reason):
        for sequence in list(self._states):
            entry = self._states.get(sequence)
            if entry is not None and entry[1] is protocol:
                self._states.pop(sequence)
                entry[0].errback(ConnectionLost("connection to %s lost" % self.name))

    def _on_timeout(self, sequence, entry):
        entry[0].errback(RPCTimeout("%s did not answer within the timeout" % self.name))
