# -*- test-case-name: utils.test.test_rpc -*-
"""The RPC packet codec, against packets recorded from the original."""

import json
import os
import struct
import zlib

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from utils import rpc
from utils.jsonfmt import RawJSON
from utils.testing import reference

GOLDEN = reference("rpc-golden.jsonl")


def golden():
    if not os.path.exists(GOLDEN):
        raise AssertionError("golden packets not found at %s" % GOLDEN)
    with open(GOLDEN) as f:
        return [json.loads(line) for line in f]


class GoldenTests(SynchronousTestCase):

    def test_requests_round_trip(self):
        """Each recorded request decodes and re-encodes byte for byte."""
        for g in golden():
            data = bytes.fromhex(g["request_hex"])
            packet = rpc.decode_packet(data)
            self.assertEqual(packet.pkg_type, rpc.REQUEST)
            self.assertEqual(rpc.encode(packet), data, g["note"])

    def test_replies_built_identically(self):
        """Our reply to each recorded request is the original's reply, byte for byte."""
        for g in golden():
            request = rpc.decode_packet(bytes.fromhex(g["request_hex"]))
            reply = rpc.decode_packet(bytes.fromhex(g["reply_hex"]))
            header = g["reply_header"]
            self.assertEqual((reply.command, reply.pkg_type, reply.sequence, reply.req_id,
                              reply.crc32),
                             (header["command"], header["pkg_type"], header["sequence"],
                              header["req_id"], header["crc32"]))
            body = json.loads(g["reply_body"])
            built = rpc.reply_body(request.req_id, body["result"], body["error"])
            self.assertEqual(built, g["reply_body"].encode(), g["note"])
            self.assertEqual(rpc.encode(request.reply(built)), bytes.fromhex(g["reply_hex"]))
            self.assertEqual(rpc.encode_reply(request, built), bytes.fromhex(g["reply_hex"]))

    def test_worked_example(self):
        """The spec's worked example: asset.list, sequence 1, crc 0xd02c92da."""
        packet = rpc.Packet(104, rpc.REQUEST, sequence=1, req_id=0, body=b"[]")
        data = rpc.encode(packet)
        self.assertEqual(data.hex(), "6265657068000000000000000000da922cd0010000000000000000000000"
                                     "0200000000005b5d")
        self.assertEqual(struct.unpack_from("<I", data, 14)[0], 0xD02C92DA)
        zeroed = data[:14] + b"\0\0\0\0" + data[18:]
        self.assertEqual(zlib.crc32(zeroed), 0xD02C92DA)


class DecoderTests(SynchronousTestCase):

    def packet(self, body=b"[1]", **kw):
        return rpc.encode(rpc.Packet(kw.pop("command", 101), body=body, **kw))

    def test_split_and_joined(self):
        """Packets split at every byte, or several in one chunk, decode alike."""
        data = self.packet(sequence=1) + self.packet(b"[2]", sequence=2, ext=b"xy")
        for cut in range(len(data) + 1):
            decoder = rpc.StreamDecoder(1000)
            packets = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
            self.assertEqual([(p.sequence, p.body, p.ext) for p in packets],
                             [(1, b"[1]", b""), (2, b"[2]", b"xy")])
            self.assertEqual(decoder.buffered, 0)

    def test_large_packet_in_small_pieces(self):
        """A packet near the limit that comes in small reads is gathered in time linear in
        its size: the reads of a packet whose header is known are kept apart until it is
        whole (joining them at each read cost the square of its size: 4 MB in 64-byte reads
        kept a core busy for about ten seconds, a hostile client's cheap way to slow a daemon)."""
        import time
        data = self.packet(b"[" + b"1," * (1 << 21) + b"1]", sequence=1) + self.packet()
        decoder = rpc.StreamDecoder(len(data))
        packets = []
        started = time.process_time()
        for start in range(0, len(data), 64):
            packets += decoder.feed(data[start:start + 64])
            if start == 64 * 1000:
                self.assertEqual(decoder.buffered, 64 * 1001)
        took = time.process_time() - started
        self.assertEqual([(p.sequence, len(p.body)) for p in packets],
                         [(1, 2 * (1 << 21) + 3), (0, 3)])
        self.assertEqual(decoder.buffered, 0)
        self.assertLess(took, 2.0)

    def test_bad_magic(self):
        """A wrong magic is a protocol error."""
        data = b"XXXX" + self.packet()[4:]
        self.assertRaises(rpc.BadMagic, rpc.StreamDecoder(1000).feed, data)

    def test_bad_checksum(self):
        """One flipped body byte fails the checksum."""
        data = bytearray(self.packet(b"[12]"))
        data[-2] ^= 1
        self.assertRaises(rpc.BadChecksum, rpc.StreamDecoder(1000).feed, bytes(data))

    def test_oversize(self):
        """A packet longer than max_pkg_size fails as soon as its header is read."""
        data = self.packet(b"[" + b"1," * 100 + b"1]")
        self.assertRaises(rpc.PacketTooLarge, rpc.StreamDecoder(100).feed, data[:40])
        self.assertEqual(len(rpc.StreamDecoder(len(data)).feed(data)), 1)

    def test_datagrams(self):
        """A datagram must be exactly one whole packet."""
        data = self.packet()
        self.assertEqual(rpc.decode_packet(data).body, b"[1]")
        self.assertRaises(rpc.TruncatedPacket, rpc.decode_packet, data[:-1])
        self.assertRaises(rpc.TruncatedPacket, rpc.decode_packet, data + b"x")
        self.assertRaises(rpc.TruncatedPacket, rpc.decode_packet, data[:20])

    @given(st.integers(0, 2**32 - 1), st.integers(0, 2), st.integers(0, 2**32 - 1),
           st.integers(0, 2**64 - 1), st.binary(max_size=300), st.binary(max_size=20))
    def test_round_trip(self, command, pkg_type, sequence, req_id, body, ext):
        """Any packet survives encode → decode."""
        packet = rpc.Packet(command, pkg_type, sequence, req_id, body, ext)
        self.assertEqual(rpc.decode_packet(rpc.encode(packet)), packet)


    @given(st.lists(st.one_of(
        st.binary(max_size=60),
        st.builds(lambda body, cut: rpc.encode(rpc.Packet(201, 0, 1, 2, body))[cut:],
                  st.binary(max_size=80), st.integers(0, 40))), max_size=8),
        st.integers(1, 400))
    def test_any_stream(self, chunks, cut):
        """Any bytes, fed in any pieces, give whole checked packets or a ProtocolError, and
        what stays buffered is bounded by max_pkg_size."""
        decoder = rpc.StreamDecoder(300)
        data = b"".join(chunks)
        try:
            for start in range(0, len(data), cut):
                for packet in decoder.feed(data[start:start + cut]):
                    self.assertEqual(rpc.decode_packet(rpc.encode(packet)), packet)
                self.assertLessEqual(decoder.buffered, 300)
        except rpc.ProtocolError:
            return      # refused: the server closes the connection


class HeartbeatTests(SynchronousTestCase):

    def test_request(self):
        """A heartbeat carries TLV (1, 4, timeout in ms)."""
        packet = rpc.heartbeat_request(3.0)
        self.assertEqual((packet.command, packet.sequence, packet.req_id), (0, 0, 0))
        self.assertEqual(packet.body, struct.pack("<HHI", 1, 4, 3000))
        self.assertEqual(rpc.heartbeat_timeout_of(packet.body), 3.0)

    def test_clamped(self):
        """Timeouts are clamped to [2, 600] seconds; unknown TLVs skipped."""
        self.assertEqual(rpc.heartbeat_timeout_of(struct.pack("<HHI", 1, 4, 500)), 2.0)
        self.assertEqual(rpc.heartbeat_timeout_of(struct.pack("<HHI", 1, 4, 10**7)), 600.0)
        body = struct.pack("<HH", 9, 2) + b"zz" + struct.pack("<HHI", 1, 4, 5000)
        self.assertEqual(rpc.heartbeat_timeout_of(body), 5.0)
        self.assertIsNone(rpc.heartbeat_timeout_of(b""))

    def test_malformed(self):
        """A TLV overrunning the body, or a timeout TLV of the wrong length, is an error."""
        self.assertRaises(rpc.ProtocolError, rpc.heartbeat_timeout_of, struct.pack("<HH", 1, 8))
        self.assertRaises(rpc.ProtocolError, rpc.heartbeat_timeout_of,
                          struct.pack("<HH", 1, 2) + b"ab")


class BodyTests(SynchronousTestCase):

    def test_reply_text(self):
        """Replies use jansson's separators and key order; id is signed 64-bit."""
        self.assertEqual(rpc.reply_body(5, {"status": "success"}),
                         b'{"error": null, "result": {"status": "success"}, "id": 5}')
        self.assertEqual(rpc.reply_body(2**64 - 1, None, rpc.INVALID_ARGUMENT()),
                         b'{"error": {"code": 1, "message": "invalid argument"}, '
                         b'"result": null, "id": -1}')

    def test_raw_result(self):
        """A result already in JSON text is written as it is, with the same id as any
        other result, at both ends of the signed range and past it."""
        raw = RawJSON('{"id": 7, "price": "1.5"}')
        for req_id, shown in [(0, b"0"), (2**63 - 1, b"9223372036854775807"),
                              (2**63, b"-9223372036854775808"), (2**64 - 1, b"-1")]:
            self.assertEqual(rpc.reply_body(req_id, raw),
                             b'{"error": null, "result": {"id": 7, "price": "1.5"}, "id": '
                             + shown + b"}")
            self.assertEqual(rpc.reply_body(req_id, raw),
                             rpc.reply_body(req_id, {"id": 7, "price": "1.5"}))

    def test_pretty(self):
        """debug mode indents by four spaces."""
        self.assertEqual(rpc.reply_body(1, [1], None, pretty=True),
                         b'{\n    "error": null,\n    "result": [\n        1\n    ],\n'
                         b'    "id": 1\n}')

    def test_params_strict(self):
        """Request bodies must be JSON arrays with 64-bit integers and no NaN."""
        self.assertEqual(rpc.parse_params(b'[1, "a", 1.5]'), [1, "a", 1.5])
        for bad in [b"{}", b"1", b"[NaN]", b"[Infinity]", b"[1e400]",
                    b"[99999999999999999999]", b"[", b"\xff", b"[" * 100000]:
            self.assertRaises(ValueError, rpc.parse_params, bad)

    def test_params_encodings(self):
        """Bodies are UTF-8 alone, as jansson reads them (the original closes the connection
        of any other): a byte order mark, UTF-16 or UTF-32 is refused, and so is a lone
        surrogate (a character no UTF-8 holds)."""
        text = '[1, "\u00e9t\u00e9", "\u20ac", [2]]'
        self.assertEqual(rpc.parse_params(text.encode("utf-8")),
                         [1, "\u00e9t\u00e9", "\u20ac", [2]])
        for encoding in ("utf-8-sig", "utf-16", "utf-16-le", "utf-16-be",
                         "utf-32", "utf-32-le", "utf-32-be"):
            self.assertRaises(ValueError, rpc.parse_params, text.encode(encoding))
        for body in (b"[]", b"[1]", b"[\n1]", b" [1]"):
            self.assertEqual(rpc.parse_params(body), json.loads(body), body)
        self.assertRaises(ValueError, rpc.parse_params, b'["\xed\xa0\x80"]')
