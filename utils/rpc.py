# -*- test-case-name: utils.test.test_rpc -*-
"""The binary RPC packet, byte-compatible with the original.

A packet is a 36-byte little-endian header, `ext_size` bytes of extension, then a JSON
body:

    magic u32 (0x70656562 "beep") | command u32 | pkg_type u16 | result u32 | crc32 u32 |
    sequence u32 | req_id u64 | body_size u32 | ext_size u16

`crc32` is the standard CRC-32 (zlib) of the whole packet with that field zeroed.  Command
0 is the heartbeat, whose body is a list of TLV entries (type u16, length u16, value); type
1 carries the sender's heartbeat timeout in milliseconds (u32).

Requests carry a JSON array of parameters; replies a JSON object
`{"error": null | {"code": int, "message": str}, "result": ..., "id": req_id}`.
"""

import struct
import zlib

from utils.jsonfmt import RawJSON, dumps, loads

__all__ = [
    "MAGIC", "HEADER_SIZE", "REQUEST", "REPLY", "PUSH", "HEARTBEAT", "Packet", "ProtocolError",
    "BadMagic", "BadChecksum", "PacketTooLarge", "TruncatedPacket", "StreamDecoder",
    "decode_packet", "encode", "encode_reply", "heartbeat_request", "heartbeat_timeout_of",
    "reply_body",
    "RPCError", "INVALID_ARGUMENT", "INTERNAL_ERROR", "SERVICE_UNAVAILABLE",
    "METHOD_NOT_FOUND", "SERVICE_TIMEOUT", "parse_params", "MAX_BODY_SIZE", "signed64",
]

MAGIC = 0x70656562
HEADER = struct.Struct("<IIHIIIQIH")
HEADER_SIZE = HEADER.size  # 36
CRC_OFFSET = 14
MAX_BODY_SIZE = (2 ** 32 - 1) // 2 - 65535 - 52

REQUEST, REPLY, PUSH = 0, 1, 2
HEARTBEAT = 0
HEARTBEAT_TLV = struct.Struct("<HHI")
TLV_HEAD = struct.Struct("<HH")
HEARTBEAT_TYPE_TIMEOUT = 1
HEARTBEAT_MIN, HEARTBEAT_MAX = 2.0, 600.0

_ZERO_CRC = b"\0\0\0\0"


class ProtocolError(Exception):
    """Bytes that are not a valid packet; the connection that sent them is closed."""

    # raised by StreamDecoder.feed: the valid packets read before the bad one
    packets = ()


class BadMagic(ProtocolError):
    """The header does not start with the protocol's magic number."""


class BadChecksum(ProtocolError):
    """The CRC-32 of the packet does not match its crc field."""


class PacketTooLarge(ProtocolError):
    """The packet is over the connection's max_pkg_size."""


class TruncatedPacket(ProtocolError):
    """The packet ends before its body and ext do."""


class RPCError(Exception):
    """An error answered in the reply body: `{"code": code, "message": message}`."""

    def __init__(self, code: int, message: str):
        super().__init__(code, message)
        self.code = code
        self.message = message

    def to_json(self):
        return {"code": self.code, "message": self.message}


def INVALID_ARGUMENT():
    return RPCError(1, "invalid argument")


def INTERNAL_ERROR():
    return RPCError(2, "internal error")


def SERVICE_UNAVAILABLE():
    return RPCError(3, "service unavailable")


def METHOD_NOT_FOUND():
    return RPCError(4, "method not found")


def SERVICE_TIMEOUT():
    return RPCError(5, "service timeout")


class Packet:
    """One RPC packet.  `body` and `ext` are bytes."""

    __slots__ = ("command", "pkg_type", "result", "sequence", "req_id", "body", "ext", "crc32")

    def __init__(self, command, pkg_type=REQUEST, sequence=0, req_id=0, body=b"", ext=b"",
                 result=0, crc32=0):
        self.command = command
        self.pkg_type = pkg_type
        self.result = result
        self.sequence = sequence
        self.req_id = req_id
        self.body = body
        self.ext = ext
        self.crc32 = crc32

    def reply(self, body: bytes) -> "Packet":
        """The reply to this request: same header fields and ext, pkg_type REPLY."""
        return Packet(self.command, REPLY, self.sequence, self.req_id, body, self.ext,
                      self.result)

    def __repr__(self):
        return ("Packet(command=%d, pkg_type=%d, sequence=%d, req_id=%d, body=%r)"
                % (self.command, self.pkg_type, self.sequence, self.req_id, self.body[:80]))

    def __eq__(self, other):
        return isinstance(other, Packet) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__ if k != "crc32")


def encode(packet: Packet) -> bytes:
    """The packet's bytes, checksum included."""
    return _frame(packet.command, packet.pkg_type, packet.result, packet.sequence,
                  packet.req_id, packet.body, packet.ext)


def encode_reply(request: Packet, body: bytes) -> bytes:
    """The bytes of the reply to `request` carrying `body`: `encode(request.reply(body))`,
    without making the reply packet."""
    return _frame(request.command, REPLY, request.result, request.sequence, request.req_id,
                  body, request.ext)


def _frame(command, pkg_type, result, sequence, req_id, body, ext):
    if len(body) > MAX_BODY_SIZE or len(ext) > 0xFFFF:
        raise PacketTooLarge("packet body of %d bytes is too large" % len(body))
    head = HEADER.pack(MAGIC, command, pkg_type, result, 0, sequence,
                       req_id & 0xFFFFFFFFFFFFFFFF, len(body), len(ext))
    crc = zlib.crc32(body, zlib.crc32(ext, zlib.crc32(head)))
    return b"".join((head[:CRC_OFFSET], crc.to_bytes(4, "little"), head[CRC_OFFSET + 4:],
                     ext, body))


def _checked(data, pos, total):
    """Decode the complete packet of `total` bytes at offset `pos` of `data`."""
    (magic, command, pkg_type, result, crc, sequence, req_id, body_size,
     ext_size) = HEADER.unpack_from(data, pos)
    view = memoryview(data)
    end = pos + total
    computed = zlib.crc32(view[pos + CRC_OFFSET + 4:end],
                          zlib.crc32(_ZERO_CRC, zlib.crc32(view[pos:pos + CRC_OFFSET])))
    if computed != crc:
        raise BadChecksum("checksum mismatch: header says %08x, packet gives %08x"
                          % (crc, computed))
    ext_end = pos + HEADER_SIZE + ext_size
    return Packet(command, pkg_type, sequence, req_id, bytes(view[ext_end:end]),
                  bytes(view[pos + HEADER_SIZE:ext_end]), result, crc)


_SIZES = struct.Struct("<I26xIH")


def _sizes(data, pos=0):
    magic, body_size, ext_size = _SIZES.unpack_from(data, pos)
    if magic != MAGIC:
        raise BadMagic("bad magic %08x" % magic)
    return HEADER_SIZE + ext_size + body_size


def decode_packet(data: bytes) -> Packet:
    """Decode one whole packet (a datagram): it must be exactly as long as it says."""
    if len(data) < HEADER_SIZE:
        raise TruncatedPacket("datagram of %d bytes is shorter than a header" % len(data))
    total = _sizes(data)
    if len(data) != total:
        raise TruncatedPacket("datagram of %d bytes, header says %d" % (len(data), total))
    return _checked(data, 0, total)


class StreamDecoder:
    """Incremental decoder for stream connections.

    `feed(data)` returns the complete packets received so far and keeps the rest.  A packet
    larger than `max_pkg_size` (header included) raises PacketTooLarge as soon as its
    header is known, like the original's fixed read buffer.  The reads of a packet whose
    header is known are kept apart until it is whole, then joined once: joined at each read,
    a large packet coming in small reads cost the square of its size.
    """

    __slots__ = ("max_pkg_size", "_buffer", "_parts", "_held", "_needed")

    def __init__(self, max_pkg_size: int):
        self.max_pkg_size = max_pkg_size
        self._buffer = b""
        self._parts = []        # the reads of an unfinished packet of `_needed` bytes
        self._held = 0          # their bytes
        self._needed = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer) + self._held

    def feed(self, data: bytes) -> list:
        """The packets completed by `data`.  A ProtocolError carries in `packets` those
        that came before the bad one, which the original handles before it closes."""
        if self._parts:
            self._parts.append(data)
            self._held += len(data)
            if self._held < self._needed:
                return []
            buf = b"".join(self._parts)
            self._parts = []
            self._held = 0
        else:
            buf = self._buffer + data if self._buffer else data
        packets = []
        pos = 0
        end = len(buf)
        try:
            while end - pos >= HEADER_SIZE:
                total = _sizes(buf, pos)
                if total > self.max_pkg_size:
                    raise PacketTooLarge("packet of %d bytes exceeds the limit of %d"
                                         % (total, self.max_pkg_size))
                if end - pos < total:
                    # the rest of this one comes in later reads
                    self._parts = [buf[pos:]]
                    self._held = end - pos
                    self._needed = total
                    self._buffer = b""
                    return packets
                packets.append(_checked(buf, pos, total))
                pos += total
        except ProtocolError as e:
            self._buffer = b""
            e.packets = packets
            raise
        self._buffer = buf[pos:] if pos < end else b""
        return packets


def heartbeat_request(timeout: float) -> Packet:
    """The heartbeat a client sends: TLV type 1 with its timeout in milliseconds."""
    body = HEARTBEAT_TLV.pack(HEARTBEAT_TYPE_TIMEOUT, 4, int(timeout * 1000))
    return Packet(HEARTBEAT, REQUEST, 0, 0, body)


def heartbeat_timeout_of(body: bytes):
    """The timeout (seconds, clamped to [2, 600]) a heartbeat body asks for, or None.

    Raises ProtocolError for a malformed TLV list.
    """
    timeout = None
    pos = 0
    while pos + TLV_HEAD.size <= len(body):
        kind, length = TLV_HEAD.unpack_from(body, pos)
        pos += TLV_HEAD.size
        if pos + length > len(body):
            raise ProtocolError("heartbeat TLV of %d bytes overruns the body" % length)
        if kind == HEARTBEAT_TYPE_TIMEOUT:
            if length != 4:
                raise ProtocolError("heartbeat timeout TLV has length %d" % length)
            ms = int.from_bytes(body[pos:pos + 4], "little")
            timeout = min(max(ms / 1000.0, HEARTBEAT_MIN), HEARTBEAT_MAX)
        pos += length
    return timeout


_INT64_LIMIT = 1 << 63


def signed64(value):
    """An integer as a C int64_t holds it (the original's jansson integers)."""
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def signed32(value):
    """An integer as a C int holds it (where the original reads a parameter into one)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def reply_body(req_id, result=None, error=None, pretty=False) -> bytes:
    """The reply JSON text, keys in the original's order: error, result, id."""
    if error is not None:
        if isinstance(error, RPCError):
            error = error.to_json()
        result = None
    elif result.__class__ is RawJSON:
        if not pretty:      # the result of every write
            return b'{"error": null, "result": %s, "id": %d}' % (
                result.text, req_id if 0 <= req_id < _INT64_LIMIT else signed64(req_id))
        result = result.value()
    return dumps({"error": error, "result": result, "id": signed64(req_id)}, pretty).encode()


def parse_params(body: bytes) -> list:
    """Parse a request body: a JSON array, strictly (no NaN, 64-bit integers).

    Raises ValueError when the body is not such an array.
    """
    if not isinstance(body, str):
        # UTF-8 alone, as jansson reads it: a byte order mark, or UTF-16 or -32, is not JSON
        # (a lone surrogate's bytes are let through, for `loads` to refuse)
        body = body.decode("utf-8", "surrogatepass")
    value = loads(body)
    if not isinstance(value, list):
        raise ValueError("request body is not a JSON array")
    return value
