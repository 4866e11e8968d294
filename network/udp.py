# -*- test-case-name: network.test.test_udp -*-
"""Fire-and-forget UDP sending and a datagram receiver calling a handler."""

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from network.address import listen_udp, parse_address

__all__ = ["UDPSender", "UDPReceiver"]


class UDPSender:
    """Sends datagrams to one udp@ (or dgram@) address; errors are logged, never raised."""

    log = Logger()

    def __init__(self, reactor, address):
        self.address = parse_address(address)
        if self.address.kind not in ("udp", "dgram"):
            raise ValueError("%s is not a datagram address" % self.address)
        self._reactor = reactor
        self._port = None
        self._failing = False

    def _open(self):
        if self._port is None:
            if self.address.kind == "udp":
                interface = "::" if self.address.is_ipv6 else ""
                self._port = self._reactor.listenUDP(0, DatagramProtocol(), interface=interface)
            else:
                self._port = self._reactor.connectUNIXDatagram(self.address.path,
                                                               DatagramProtocol())
        return self._port

    def send(self, data: bytes):
        try:
            port = self._open()
            if self.address.kind == "udp":
                port.write(data, (self.address.host, self.address.port))
            else:
                port.write(data)
            self._failing = False
        except Exception as e:
            if not self._failing:
                self.log.warn("cannot send to {address}: {error}", address=str(self.address),
                              error=e)
            self._failing = True

    def close(self):
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()


class UDPReceiver(DatagramProtocol):
    """Calls `handler(data, (host, port))` for every datagram received."""

    log = Logger()

    def __init__(self, handler):
        self.handler = handler

    def datagramReceived(self, data, addr):
        try:
            self.handler(data, addr)
        except Exception:
            self.log.failure("datagram handler failed for a datagram from {addr}", addr=addr)

    def listen(self, reactor, address):
        return listen_udp(reactor, address, self)
