# -*- test-case-name: network.test.test_address -*-
"""Address strings in the original's config form, turned into Twisted endpoints.

    tcp@127.0.0.1:7316     TCP (IPv4; IPv6 as tcp@[::1]:7316)
    udp@0.0.0.0:7316       UDP
    stream@/tmp/x.sock     UNIX stream socket
    dgram@/tmp/x.sock      UNIX datagram socket
    seqpacket@/tmp/x.sock  UNIX seqpacket socket (parsed; not served by the reactor)

The type is case-insensitive; the port may be written in decimal, `0x` hex or `0`-prefixed
octal, as the original accepts.  Host names are not resolved, except `localhost`, which
means 127.0.0.1.  Every malformed address raises `AddressError` naming it.
"""

import ipaddress
import os
import socket
import stat

from twisted.internet import endpoints
from twisted.internet.protocol import ServerFactory

__all__ = ["AddressError", "Address", "parse_address", "server_endpoint", "client_endpoint",
           "server_description", "listen", "listen_monitor", "listen_udp", "unlink_stale", "set_buffers",
           "buffer_sizes", "STREAM_KINDS",
           "DATAGRAM_KINDS"]

STREAM_KINDS = ("tcp", "stream", "seqpacket")
DATAGRAM_KINDS = ("udp", "dgram")
# pending connections a listening socket queues, as the original's listen(SOMAXCONN); the
# kernel caps it at net.core.somaxconn.  Twisted's default of 50 drops SYNs of a burst of
# clients (thousands of websocket users reconnecting at once) into seconds of retries.
BACKLOG = socket.SOMAXCONN
KINDS = STREAM_KINDS + DATAGRAM_KINDS


class AddressError(ValueError):
    """An address string that cannot be used; the message names it."""


class Address:
    """One parsed address: `kind` and either `host`/`port` or `path`."""

    __slots__ = ("kind", "host", "port", "path")

    def __init__(self, kind, host=None, port=None, path=None):
        self.kind = kind
        self.host = host
        self.port = port
        self.path = path

    @property
    def is_inet(self):
        return self.kind in ("tcp", "udp")

    @property
    def is_ipv6(self):
        return self.is_inet and ":" in self.host

    @property
    def is_stream(self):
        return self.kind in STREAM_KINDS

    def __str__(self):
        if self.is_inet:
            host = "[%s]" % self.host if self.is_ipv6 else self.host
            return "%s@%s:%d" % (self.kind, host, self.port)
        return "%s@%s" % (self.kind, self.path)

    def __repr__(self):
        return "Address(%r)" % str(self)

    def __eq__(self, other):
        return isinstance(other, Address) and str(self) == str(other)

    def __hash__(self):
        return hash(str(self))


def _parse_port(text, original):
    try:
        if text[:2].lower() == "0x":
            port = int(text[2:], 16)
        elif len(text) > 1 and text.startswith("0"):
            port = int(text[1:], 8)
        else:
            port = int(text, 10)
    except ValueError:
        raise AddressError("invalid port %r in address %r" % (text, original)) from None
    if not 0 <= port <= 65535 or not text.isalnum():
        raise AddressError("invalid port %r in address %r" % (text, original))
    return port


def _parse_host(text, original):
    if text == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise AddressError("invalid host %r in address %r (use a numeric IP address)"
                           % (text, original)) from None


def parse_address(text) -> Address:
    """Parse `<type>@<location>`; an `Address` is returned unchanged."""
    if isinstance(text, Address):
        return text
    if not isinstance(text, str):
        raise AddressError("address must be a string, not %r" % (text,))
    kind, sep, location = text.partition("@")
    kind = kind.lower()
    if not sep or kind not in KINDS:
        raise AddressError("invalid address %r: expected <type>@<location> with type one of %s"
                           % (text, ", ".join(KINDS)))
    if kind in ("tcp", "udp"):
        if location.startswith("["):
            host, bracket, rest = location[1:].partition("]")
            if not bracket or not rest.startswith(":"):
                raise AddressError("invalid address %r: expected [ipv6]:port" % text)
            port = rest[1:]
        else:
            host, colon, port = location.partition(":")
            if not colon:
                raise AddressError("invalid address %r: expected host:port" % text)
        return Address(kind, host=_parse_host(host, text), port=_parse_port(port, text))
    if not location or "\0" in location:
        raise AddressError("invalid address %r: expected a socket path" % text)
    return Address(kind, path=location)


def _escape(text):
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def server_description(address) -> str:
    """A `serverFromString` description for a stream address (for strports services)."""
    addr = parse_address(address)
    if addr.kind == "tcp":
        kind = "tcp6" if addr.is_ipv6 else "tcp"
        return "%s:port=%d:interface=%s:backlog=%d" % (kind, addr.port, _escape(addr.host),
                                                      BACKLOG)
    if addr.kind == "stream":
        return "unix:address=%s:mode=777:lockfile=0:backlog=%d" % (_escape(addr.path), BACKLOG)
    raise AddressError("address %r is not a stream address a server can listen on" % str(addr))


def unlink_stale(path):
    """Remove a UNIX socket left at `path` by a process that did not clean up."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def server_endpoint(reactor, address):
    """An IStreamServerEndpoint for a tcp or stream address."""
    addr = parse_address(address)
    if addr.kind == "tcp":
        cls = endpoints.TCP6ServerEndpoint if addr.is_ipv6 else endpoints.TCP4ServerEndpoint
        return cls(reactor, addr.port, backlog=BACKLOG, interface=addr.host)
    if addr.kind == "stream":
        unlink_stale(addr.path)
        return endpoints.UNIXServerEndpoint(reactor, addr.path, backlog=BACKLOG, mode=0o777,
                                            wantPID=False)
    raise AddressError("cannot listen for streams on %r" % str(addr))


def client_endpoint(reactor, address, timeout=None):
    """An IStreamClientEndpoint for a tcp or stream address."""
    addr = parse_address(address)
    kwargs = {} if timeout is None else {"timeout": timeout}
    if addr.kind == "tcp":
        cls = endpoints.TCP6ClientEndpoint if addr.is_ipv6 else endpoints.TCP4ClientEndpoint
        return cls(reactor, addr.host, addr.port, **kwargs)
    if addr.kind == "stream":
        return endpoints.UNIXClientEndpoint(reactor, addr.path, **kwargs)
    raise AddressError("cannot connect a stream to %r" % str(addr))


def set_buffers(sock, read_mem=0, write_mem=0):
    """Set a socket's receive and send buffer sizes (the config's `read_mem`, `write_mem`;
    0 leaves the system's).  Connections accepted on a listening socket inherit them."""
    if read_mem:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, read_mem)
    if write_mem:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, write_mem)


def buffer_sizes(section) -> dict:
    """`read_mem` and `write_mem` of a server or client config section, as keywords."""
    return {"read_mem": section.get("read_mem") or 0, "write_mem": section.get("write_mem") or 0}


def set_no_delay(sock):
    """Send small packets at once (no Nagle delay), as the original sets every TCP socket:
    a reply written while an earlier one is not acknowledged yet would otherwise wait for
    the peer's delayed acknowledgement, about 40 ms.  Connections accepted on a listening
    socket inherit it."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def listen(reactor, address, factory: ServerFactory, read_mem=0, write_mem=0):
    """Listen on a stream address; the Deferred fails with CannotListenError if it cannot.

    `read_mem`/`write_mem` set the buffer sizes of the connections it accepts, which send
    without delay (`set_no_delay`) over TCP."""
    addr = parse_address(address)

    def listening(port):
        set_buffers(port.socket, read_mem, write_mem)
        if addr.kind == "tcp":
            set_no_delay(port.socket)
        return port

    return server_endpoint(reactor, addr).listen(factory).addCallback(listening)


async def listen_monitor(reactor, section):
    """Listen on the addresses of a `monitor` section (a liveness port): connections are
    accepted and what they send is ignored.  Returns the ports."""
    from twisted.internet.protocol import Factory, Protocol
    factory = Factory.forProtocol(Protocol)
    ports = []
    for address in section["bind"]:
        ports.append(await listen(reactor, address, factory, **buffer_sizes(section)))
    return ports


def listen_udp(reactor, address, protocol, read_mem=0, write_mem=0, max_size=8192):
    """Listen on a udp or dgram address with a DatagramProtocol, reading datagrams of up to
    `max_size` bytes (a longer one is cut there)."""
    addr = parse_address(address)
    if addr.kind == "udp":
        port = reactor.listenUDP(addr.port, protocol, interface=addr.host,
                                 maxPacketSize=max_size)
    elif addr.kind == "dgram":
        unlink_stale(addr.path)
        port = reactor.listenUNIXDatagram(addr.path, protocol, mode=0o777,
                                          maxPacketSize=max_size)
    else:
        raise AddressError("cannot listen for datagrams on %r" % str(addr))
    set_buffers(port.socket, read_mem, write_mem)
    return port
