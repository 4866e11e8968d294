# -*- test-case-name: network.test.test_output -*-
"""Writing to stream transports: how much waits, and sending without a reactor turn."""

from twisted.internet import process, tcp, unix

__all__ = ["write_now", "pending_output", "flush", "unsent_over", "close_now"]

# plain socket connections and pipes to child processes, whose buffer and send this module
# may reach into
_DIRECT = (tcp.Server, tcp.Client, unix.Server, unix.Client, process.ProcessWriter)


def write_now(transport, data: bytes):
    """Write `data`, sending it at once when the transport has nothing queued.

    `transport.write` only queues: the bytes leave on the reactor's next pass, after two
    epoll changes (watch for writability, then stop).  For a message fanned out to thousands
    of connections that is most of the cost, so a plain TCP or UNIX connection with an empty
    buffer gets `send` straight away and only what the kernel does not take is queued.  TLS
    and other transports use `write`.  The pipe to a child process's stdin
    (`process.pipes[0]`) works the same way.
    """
    if (type(transport) in _DIRECT and not transport.dataBuffer
            and not transport._tempDataLen and transport.connected
            and not transport.disconnecting and not getattr(transport, "TLS", False)):
        sent = transport.writeSomeData(data)
        if sent.__class__ is int:
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


def pending_output(transport) -> int:
    """Bytes written to a transport and not yet sent (0 when it cannot tell)."""
    buffered = getattr(transport, "dataBuffer", b"")
    return len(buffered) + getattr(transport, "_tempDataLen", 0)


def flush(transport):
    """Send what a plain socket transport has queued, as far as the kernel takes it now
    (the reactor would on its next pass); other transports are left to the reactor."""
    if (type(transport) in _DIRECT and transport.connected and not transport.disconnecting
            and not getattr(transport, "TLS", False)
            and (transport.dataBuffer or transport._tempDataLen)):
        transport.doWrite()


def unsent_over(transport, limit: int) -> bool:
    """Whether more than `limit` bytes written to `transport` stay unsent once the kernel
    took what it takes now (`flush`): a peer that does not read, not one pass of the reactor
    that wrote much."""
    if pending_output(transport) <= limit:
        return False
    flush(transport)
    return pending_output(transport) > limit


def close_now(transport):
    """Close at once, as the original closes a session: what the kernel takes now is sent
    (`flush`) and the connection shut in order; what it does not take is dropped with the
    connection (`loseConnection` would wait for a peer that does not read, forever)."""
    flush(transport)
    if pending_output(transport):
        transport.abortConnection()
    else:
        transport.loseConnection()
