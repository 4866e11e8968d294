# -*- test-case-name: utils.test.test_rpc_server -*-
"""The RPC server protocol, over StringTransport and a fake clock."""

import struct

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from utils import rpc
from utils.rpc_server import (NO_REPLY, RawJSON, RPCDatagramProtocol, RPCServerFactory)


class Server(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.pending = []
        handlers = {
            101: lambda params, req: {"echo": params},
            102: self.fail_handler,
            103: lambda params, req: 1 / 0,
            104: lambda params, req: self.pending.append(defer.Deferred()) or self.pending[-1],
            105: lambda params, req: RawJSON(b'{"raw": 1}'),
            106: self.manual,
            107: lambda params, req: {"a": float("nan")},
            108: lambda params, req: defer.succeed({"a": "\ud800"}),
            109: self.manual_unencodable,
        }
        self.factory = RPCServerFactory(handlers, max_pkg_size=200, heartbeat_check=True,
                                        clock=self.clock, name="test")
        self.factory.startFactory()
        self.addCleanup(self.factory.stopFactory)
        self.proto, self.transport = self.connect()

    def connect(self):
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def fail_handler(self, params, req):
        raise rpc.RPCError(10, "balance not enough")

    def manual(self, params, req):
        req.reply_result("later")
        return NO_REPLY

    def manual_unencodable(self, params, req):
        req.reply_result(object())
        return NO_REPLY

    def send(self, command, body=b"[]", sequence=1, req_id=7, ext=b"", proto=None):
        (proto or self.proto).dataReceived(
            rpc.encode(rpc.Packet(command, sequence=sequence, req_id=req_id, body=body, ext=ext)))

    def replies(self, transport=None):
        transport = transport or self.transport
        packets = rpc.StreamDecoder(10**6).feed(transport.value())
        transport.clear()
        return packets


class DispatchTests(Server):

    def test_result(self):
        """A handler's result comes back with the request's header fields and ext."""
        self.send(101, b'[1, "BTC"]', sequence=9, req_id=2**64 - 2, ext=b"e")
        [reply] = self.replies()
        self.assertEqual((reply.command, reply.pkg_type, reply.sequence, reply.req_id, reply.ext),
                         (101, rpc.REPLY, 9, 2**64 - 2, b"e"))
        self.assertEqual(reply.body,
                         b'{"error": null, "result": {"echo": [1, "BTC"]}, "id": -2}')

    def test_rpc_error(self):
        """RPCError becomes an error reply with a null result."""
        self.send(102)
        self.assertEqual(self.replies()[0].body,
                         b'{"error": {"code": 10, "message": "balance not enough"}, '
                         b'"result": null, "id": 7}')

    def test_crash_is_internal_error(self):
        """An unexpected exception answers 2 internal error and is logged."""
        self.send(103)
        self.assertIn(b'"code": 2, "message": "internal error"', self.replies()[0].body)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_unencodable_result_is_internal_error(self):
        """A result JSON cannot carry (NaN, a lone surrogate, an object), whether returned,
        fired by a Deferred or replied by the handler itself, is logged and answered with 2
        internal error: the client is not left waiting for a reply that never comes."""
        self.send(107, sequence=1)
        self.send(108, sequence=2)
        self.send(109, sequence=3)
        self.assertEqual([(p.sequence, p.body) for p in self.replies()],
                         [(n, b'{"error": {"code": 2, "message": "internal error"}, '
                              b'"result": null, "id": 7}') for n in (1, 2, 3)])
        self.assertEqual(self.proto.waiting, 0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_deferred_replies_in_completion_order(self):
        """Deferred results are answered when they fire, in the order they fire."""
        self.send(104, sequence=1)
        self.send(104, sequence=2)
        self.assertEqual(self.replies(), [])
        self.pending[1].callback("second")
        self.pending[0].errback(rpc.RPCError(11, "x"))
        self.assertEqual([(p.sequence, p.body) for p in self.replies()],
                         [(2, b'{"error": null, "result": "second", "id": 7}'),
                          (1, b'{"error": {"code": 11, "message": "x"}, "result": null, '
                              b'"id": 7}')])

    def test_raw_and_manual(self):
        """RawJSON results are written as given; NO_REPLY handlers reply themselves."""
        self.send(105)
        self.send(106)
        self.assertEqual([p.body for p in self.replies()],
                         [b'{"error": null, "result": {"raw": 1}, "id": 7}',
                          b'{"error": null, "result": "later", "id": 7}'])

    def test_unknown_command_no_reply(self):
        """An unknown command is logged and not answered; the connection stays."""
        self.send(999)
        self.assertEqual(self.replies(), [])
        self.assertTrue(self.transport.connected)
        self.assertFalse(self.transport.disconnecting)

    def test_unknown_command_with_a_bad_body_closes(self):
        """The body is read before the command is looked up, as the original reads it: one
        that is not a JSON array closes the connection even for an unknown command."""
        self.send(999, b"not json")
        self.assertEqual(self.replies(), [])
        self.assertTrue(self.transport.disconnecting)

    def test_replies_after_the_peer_shut_its_side(self):
        """A peer that shuts its writing down after its requests gets their replies, those
        still to come included; the connection closes after the last one."""
        self.send(104, sequence=1)
        self.send(101, sequence=2)
        self.proto.readConnectionLost()
        self.assertFalse(self.transport.disconnecting)
        self.pending[0].callback("late")
        self.assertEqual([p.sequence for p in self.replies()], [2, 1])
        self.assertTrue(self.transport.disconnecting)

    def test_shut_side_with_nothing_waiting_closes(self):
        """With every request answered (an unknown command has no answer to wait for), a
        peer's shutdown closes the connection at once, after what is written."""
        self.send(101)
        self.send(999)
        self.proto.readConnectionLost()
        self.assertEqual(len(self.replies()), 1)
        self.assertTrue(self.transport.disconnecting)

    def test_pipelined(self):
        """Several requests in one chunk are all answered in order."""
        data = b"".join(rpc.encode(rpc.Packet(101, sequence=i, body=b"[%d]" % i))
                        for i in range(5))
        self.proto.dataReceived(data)
        self.assertEqual([p.sequence for p in self.replies()], list(range(5)))


class BadInputTests(Server):

    def assertClosed(self):
        self.assertTrue(self.transport.disconnecting)

    def test_not_json(self):
        """A body that is not JSON closes the connection without a reply."""
        self.send(101, b"{not json")
        self.assertEqual(self.replies(), [])
        self.assertClosed()

    def test_not_array(self):
        """A JSON object body closes the connection."""
        self.send(101, b'{"a": 1}')
        self.assertClosed()

    def test_bad_magic(self):
        """Bad magic closes the connection."""
        self.proto.dataReceived(b"GARBAGE" * 10)
        self.assertClosed()

    def test_bad_crc(self):
        """A bad checksum closes the connection."""
        data = bytearray(rpc.encode(rpc.Packet(101, body=b"[1]")))
        data[-1] ^= 0xFF
        self.proto.dataReceived(bytes(data))
        self.assertClosed()

    def test_oversize(self):
        """A packet over max_pkg_size closes the connection."""
        self.send(101, b"[" + b"1," * 200 + b"1]")
        self.assertEqual(self.replies(), [])
        self.assertClosed()

    def test_truncated_waits(self):
        """A partial packet is kept until the rest arrives."""
        data = rpc.encode(rpc.Packet(101, body=b"[1]"))
        self.proto.dataReceived(data[:20])
        self.assertEqual(self.replies(), [])
        self.proto.dataReceived(data[20:])
        self.assertEqual(len(self.replies()), 1)

    def test_nothing_after_close(self):
        """Packets after a bad one in the same chunk are not served."""
        good = rpc.encode(rpc.Packet(101, body=b"[1]"))
        bad = rpc.encode(rpc.Packet(101, body=b"x"))
        self.proto.dataReceived(bad + good)
        self.assertEqual(self.replies(), [])


class HeartbeatTests(Server):

    def test_answered_with_empty_body(self):
        """A heartbeat gets an empty-bodied reply echoing its header and ext."""
        self.proto.dataReceived(rpc.encode(rpc.Packet(0, body=struct.pack("<HHI", 1, 4, 10000),
                                                      ext=b"x")))
        [reply] = self.replies()
        self.assertEqual((reply.command, reply.pkg_type, reply.body, reply.ext),
                         (0, rpc.REPLY, b"", b"x"))
        self.assertEqual(self.proto.heartbeat_timeout, 10.0)

    def test_idle_connection_closed(self):
        """With heartbeat_check, no heartbeat within the timeout closes the connection."""
        self.clock.advance(3.0)
        self.assertFalse(self.transport.disconnecting)
        self.proto.dataReceived(rpc.encode(rpc.heartbeat_request(5.0)))
        self.clock.advance(5.0)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1.0)
        self.assertTrue(self.transport.disconnecting)

    def test_requests_do_not_count_as_heartbeats(self):
        """Only heartbeats keep a checked connection alive."""
        for _ in range(4):
            self.send(101)
            self.clock.advance(1.0)
        self.assertTrue(self.transport.disconnecting)

    def test_no_check(self):
        """Without heartbeat_check idle connections stay."""
        factory = RPCServerFactory({}, 100, heartbeat_check=False, clock=self.clock)
        factory.startFactory()
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.clock.advance(100)
        self.assertFalse(transport.disconnecting)
        factory.stopFactory()

    def test_malformed_heartbeat_closes(self):
        """A heartbeat with an overrunning TLV closes the connection."""
        self.proto.dataReceived(rpc.encode(rpc.Packet(0, body=struct.pack("<HH", 1, 40))))
        self.assertTrue(self.transport.disconnecting)


class SlowReaderTests(Server):

    def test_buf_limit(self):
        """A client whose unsent replies exceed buf_limit buffers is dropped."""
        factory = RPCServerFactory({101: lambda p, r: "x" * 150}, 200, heartbeat_check=False,
                                   buf_limit=2, clock=self.clock)
        proto = factory.buildProtocol(None)

        class Stuck(StringTransport):
            aborted = False

            def __init__(self):
                super().__init__()
                self.dataBuffer = b""

            def write(self, data):
                self.dataBuffer += data

            def abortConnection(self):
                self.aborted = True

        transport = Stuck()
        proto.makeConnection(transport)
        for i in range(3):
            self.send(101, sequence=i, proto=proto)
        self.assertTrue(transport.aborted)


class DatagramTests(Server):

    def test_udp_round_trip(self):
        """A request datagram is answered to its source; bad datagrams are dropped."""
        proto = RPCDatagramProtocol(self.factory)
        sent = []

        class Transport:
            def write(self, data, addr):
                sent.append((data, addr))

        proto.transport = Transport()
        packet = rpc.encode(rpc.Packet(101, body=b"[5]"))
        proto.datagramReceived(packet, ("127.0.0.1", 5555))
        proto.datagramReceived(packet[:-1], ("127.0.0.1", 5556))
        proto.datagramReceived(rpc.encode(rpc.heartbeat_request(3)), ("127.0.0.1", 5557))
        self.assertEqual([addr for _, addr in sent], [("127.0.0.1", 5555), ("127.0.0.1", 5557)])
        self.assertEqual(rpc.decode_packet(sent[0][0]).body,
                         b'{"error": null, "result": {"echo": [5]}, "id": 0}')

    def test_udp_reply_too_large(self):
        """A reply no datagram can carry is logged as an error when it is sent, the
        request's Deferred ending cleanly, where the error was left in the Deferred (logged
        as critical when it was collected); the next request is answered."""
        from twisted.internet.error import MessageLengthError
        proto = RPCDatagramProtocol(self.factory)
        sent = []

        class Transport:
            def write(self, data, addr):
                if len(data) > 100:
                    raise MessageLengthError("message too long")
                sent.append(addr)

        proto.transport = Transport()
        with capturedLogs() as events:
            proto.datagramReceived(rpc.encode(rpc.Packet(104, body=b"[]")), ("127.0.0.1", 1))
            self.pending[0].callback({"big": "x" * 200})
            proto.datagramReceived(rpc.encode(rpc.Packet(101, body=b"[1]")), ("127.0.0.1", 2))
        self.assertEqual(sent, [("127.0.0.1", 2)])
        errors = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("to 127.0.0.1:1 not sent: Message is too long", errors[0])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertIsNone(self.successResultOf(self.pending[0]))

    def test_udp_over_max_pkg_size_dropped(self):
        """A datagram longer than max_pkg_size is dropped, as a longer stream packet
        closes its connection; one of max_pkg_size is answered."""
        proto = RPCDatagramProtocol(self.factory)
        sent = []

        class Transport:
            def write(self, data, addr):
                sent.append(addr)

        proto.transport = Transport()
        header = len(rpc.encode(rpc.Packet(101, body=b"[]")))
        for size in (200, 201):
            body = b"[%s]" % (b" " * (size - header))
            packet = rpc.encode(rpc.Packet(101, body=body))
            self.assertEqual(len(packet), size)
            proto.datagramReceived(packet, ("127.0.0.1", size))
        self.assertEqual(sent, [("127.0.0.1", 200)])
