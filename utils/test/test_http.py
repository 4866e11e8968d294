# -*- test-case-name: utils.test.test_http -*-
"""The httptools-based JSON-RPC HTTP server: framing, validation, ordering, limits."""

import gc
import json
import socket
import weakref

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, threads
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from network import address
from network.output import pending_output
from utils import http, testing


def post(body, headers=b""):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    return (b"POST / HTTP/1.1\r\nHost: x\r\n" + headers +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


def call(request_id, method, params=()):
    return post({"id": request_id, "method": method, "params": list(params)})


def responses(data):
    """[(status, body)] parsed from what the server wrote."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        names = [line.split(b":")[0] for line in lines[1:]]
        assert names == [b"Date", b"Content-Length"], names
        length = int(lines[2].split(b":")[1])
        out.append((status, rest[:length]))
        data = rest[length:]
    return out


class ServerTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.pending = {}

        def echo(request):
            return 200, json.dumps({"error": None, "result": request.params,
                                    "id": request.id}).encode()

        def later(request):
            d = defer.Deferred()
            self.pending[request.id] = d
            return d

        def broken(request):
            raise RuntimeError("boom")

        self.factory = http.HTTPServerFactory({"echo": echo, "later": later, "broken": broken},
                                              max_body=1000, keep_alive=60,
                                              request_timeout=5, max_pipeline=4,
                                              reactor=self.clock)
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def answers(self):
        data = self.transport.value()
        self.transport.clear()
        return responses(data)

    def test_freed_once_closed(self):
        """A closed connection is freed at once, with the answers it held, without waiting
        for the cycle collector (the bytes of a client that read nothing do not bring it on,
        and a gateway grew by hundreds of megabytes)."""
        self.proto.dataReceived(call(1, "later", []) + call(2, "echo", [1]))
        self.transport.unregisterProducer()     # as a TCP transport lets go of it
        self.proto.connectionLost(None)
        self.pending.pop(1).callback((200, b"{}"))     # an answer after the close
        freed = weakref.ref(self.proto)
        if gc.isenabled():
            gc.disable()
            self.addCleanup(gc.enable)
        del self.proto, self.transport
        self.assertIsNone(freed())

    def test_echo(self):
        """A good call is answered 200 with the handler's body and the two headers."""
        self.proto.dataReceived(call(7, "echo", [1, "a"]))
        self.assertEqual(self.answers(), [(200, b'{"error": null, "result": [1, "a"], "id": 7}')])
        self.assertFalse(self.transport.disconnecting)

    def test_body_in_pieces_and_chunked(self):
        """A body split over reads, or sent chunked, is reassembled whole."""
        data = call(1, "echo", ["x" * 50])
        for i in range(0, len(data), 7):
            self.proto.dataReceived(data[i:i + 7])
        body = json.dumps({"id": 2, "method": "echo", "params": [2]}).encode()
        chunked = (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" +
                   b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (5, body[:5], len(body) - 5, body[5:]))
        self.proto.dataReceived(chunked)
        self.assertEqual([s for s, _ in self.answers()], [200, 200])

    def test_head_size_bounded(self):
        """A request whose line and headers (or a chunked body's trailers) grow past
        MAX_HEAD_SIZE bytes is answered 400 and closed as soon as a read takes it there,
        as the original refuses headers over 80 kB: the parser would gather them without
        bound until `request_timeout`.  Up to the bound, and a body of many small chunks,
        are served."""
        pad = b"X-Pad: " + b"a" * (http.MAX_HEAD_SIZE - 200) + b"\r\n"
        self.proto.dataReceived(call(1, "echo", [1]).replace(b"\r\n", b"\r\n" + pad, 1))
        self.assertEqual([s for s, _ in self.answers()], [200])
        head = b"POST / HTTP/1.1\r\nX-Pad: "
        for start in (head, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"1\r\n{\r\n0\r\nX-Trailer: "):
            self.setUp()
            self.proto.dataReceived(start)
            sent = 0
            while not self.transport.disconnecting and sent < 10 * http.MAX_HEAD_SIZE:
                self.proto.dataReceived(b"a" * 4096)
                sent += 4096
            self.assertEqual([s for s, _ in self.answers()], [400])
            self.assertTrue(self.transport.disconnecting)
            self.assertLess(sent, http.MAX_HEAD_SIZE + 8192)
        # a head of half the bound, split over reads, and a body read whole after it: the
        # body's bytes are not the head's
        factory = http.HTTPServerFactory(self.factory.handlers, max_body=200000, keep_alive=60,
                                         request_timeout=5, reactor=self.clock)
        proto, transport = factory.buildProtocol(None), StringTransport()
        proto.makeConnection(transport)
        body = json.dumps({"id": 3, "method": "echo", "params": ["x" * 60000]}).encode()
        head = (b"POST / HTTP/1.1\r\nX-Pad: " + b"a" * 40000
                + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
        for part in (head[:1448], head[1448:], body):
            proto.dataReceived(part)
        self.assertEqual([s for s, _ in responses(transport.value())], [200])
        self.setUp()
        body = json.dumps({"id": 2, "method": "echo", "params": ["x" * 300]}).encode()
        self.proto.dataReceived(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        for byte in body:
            self.proto.dataReceived(b"1;ext=value\r\n%c\r\n" % byte)
        self.proto.dataReceived(b"0\r\n\r\n")
        self.assertEqual([s for s, _ in self.answers()], [200])

    def test_unknown_method(self):
        """An unknown method gets 404 with error 4 and the connection stays open."""
        self.proto.dataReceived(call(3, "nope"))
        self.assertEqual(self.answers(), [(404, b'{"error": {"code": 4, "message": '
                                                b'"method not found"}, "result": null, "id": 3}')])
        self.assertFalse(self.transport.disconnecting)

    def test_bad_envelopes(self):
        """Each malformed request gets an empty 400 and the connection is closed."""
        cases = [post(b"{not json"), post(b"[1]"), post({"id": "1", "method": "echo",
                                                         "params": []}),
                 post({"id": True, "method": "echo", "params": []}),
                 post({"id": 1, "method": 5, "params": []}),
                 post({"id": 1, "method": "echo", "params": {}}),
                 post({"id": 1, "method": "echo"}), post(b"\xff\xfe"),
                 b"GET / HTTP/1.1\r\n\r\n", post(b""), b"NOT HTTP AT ALL\r\n\r\n"]
        # JSON as jansson reads it: UTF-8 alone, no NUL, nesting within jsonfmt.MAX_DEPTH
        envelope = '{"id": 1, "method": "echo", "params": [1]}'
        cases += [post(envelope.encode(encoding))
                  for encoding in ("utf-8-sig", "utf-16", "utf-16-le", "utf-32")]
        cases += [post(b'{"id": 1, "method": "echo", "params": ["a\\u0000b"]}'),
                  post(b'{"id": 1, "method": "echo", "params": %s}'
                       % (b"[" * 100 + b"]" * 100))]
        for case in cases:
            self.setUp()
            self.proto.dataReceived(case)
            self.assertEqual(self.answers(), [(400, b"")], case)
            self.assertTrue(self.transport.disconnecting, case)

    def test_body_too_large(self):
        """A body over max_body is refused with 413 and the connection closed."""
        self.proto.dataReceived(call(1, "echo", ["x" * 2000]))
        self.assertEqual(self.answers(), [(413, b"")])
        self.assertTrue(self.transport.disconnecting)

    def test_pipelined_answers_in_order(self):
        """Pipelined requests are answered in request order even when handlers finish late."""
        self.proto.dataReceived(call(1, "later") + call(2, "echo") + call(3, "later"))
        self.assertEqual(self.answers(), [])
        self.pending[3].callback((200, b"three"))
        self.assertEqual(self.answers(), [])
        self.pending[1].callback((200, b"one"))
        self.assertEqual([b for _, b in self.answers()],
                         [b"one", b'{"error": null, "result": [], "id": 2}', b"three"])

    def test_handler_error(self):
        """A handler that raises gets an empty 500; the error is logged."""
        self.proto.dataReceived(call(1, "broken"))
        self.assertEqual(self.answers(), [(500, b"")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_error_after_pipelined_requests(self):
        """A bad request after good ones: the good ones are answered first, then close."""
        self.proto.dataReceived(call(1, "later") + post(b"junk"))
        self.assertEqual(self.answers(), [])
        self.assertFalse(self.transport.disconnecting)
        self.pending[1].callback((200, b"ok"))
        self.assertEqual(self.answers(), [(200, b"ok"), (400, b"")])
        self.assertTrue(self.transport.disconnecting)

    def test_nothing_runs_after_the_last_answer(self):
        """Requests read in the same segment after a refused request, or after one that
        asks to close, are not run: their answers could never be sent."""
        for first in (post(b"junk"), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                      post({"id": 1, "method": "later", "params": []},
                           b"Connection: close\r\n")):
            self.setUp()
            self.proto.dataReceived(first + call(2, "later") + call(3, "echo"))
            self.assertNotIn(2, self.pending)
            for d in self.pending.values():
                d.callback((200, b"ok"))
            self.assertEqual(len(self.answers()), 1)
            self.assertTrue(self.transport.disconnecting)

    def test_pipeline_limit_pauses_reading(self):
        """Past max_pipeline unanswered requests the server stops reading, then resumes."""
        self.proto.dataReceived(b"".join(call(i, "later") for i in range(4)))
        self.assertEqual(self.transport.producerState, "paused")
        for i in range(4):
            self.pending[i].callback((200, b"%d" % i))
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(len(self.answers()), 4)

    def test_idle_and_slow_clients(self):
        """Idle connections close after keep_alive; an incomplete request after request_timeout."""
        self.clock.advance(59)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(self.transport.disconnecting)
        self.setUp()
        self.proto.dataReceived(call(1, "echo")[:30])
        self.clock.advance(4)
        self.assertFalse(self.transport.disconnected)
        self.proto.dataReceived(b"")
        self.clock.advance(1.5)
        self.assertTrue(self.transport.disconnected)

    def test_keep_alive_zero_keeps_idle_connections(self):
        """keep_alive 0 closes no idle connection, as the original's."""
        self.factory.keep_alive = 0
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.proto.dataReceived(call(1, "echo"))
        self.assertEqual(len(self.answers()), 1)
        self.clock.advance(10 ** 7)
        self.assertFalse(self.transport.disconnecting)

    def test_connection_close_and_http10(self):
        """`Connection: close` and HTTP/1.0 without keep-alive close after the answer."""
        self.proto.dataReceived(post({"id": 1, "method": "echo", "params": []},
                                     b"Connection: close\r\n"))
        self.assertEqual(len(self.answers()), 1)
        self.assertTrue(self.transport.disconnecting)
        self.setUp()
        body = b'{"id": 1, "method": "echo", "params": []}'
        self.proto.dataReceived(b"POST / HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s"
                                % (len(body), body))
        self.assertEqual(len(self.answers()), 1)
        self.assertTrue(self.transport.disconnecting)

    def test_answers_after_the_client_shut_its_side(self):
        """A client that shuts its writing down after its requests gets their answers, a
        late one included, then the connection closes; a request cut short is dropped."""
        self.proto.dataReceived(call(1, "later") + call(2, "echo") + post(b"{")[:-1])
        self.proto.readConnectionLost()
        self.assertFalse(self.transport.disconnecting)
        self.pending[1].callback((200, b"one"))
        self.assertEqual([b for _, b in self.answers()],
                         [b"one", b'{"error": null, "result": [], "id": 2}'])
        self.assertTrue(self.transport.disconnecting)

    def test_shut_side_with_nothing_waiting_closes(self):
        """With every answer written, a client's shutdown closes the connection."""
        self.proto.dataReceived(call(2, "echo"))
        self.assertEqual(len(self.answers()), 1)
        self.proto.readConnectionLost()
        self.assertTrue(self.transport.disconnecting)

    def test_answer_after_disconnect_is_dropped(self):
        """A handler finishing after the client left writes nothing."""
        self.proto.dataReceived(call(1, "later"))
        self.proto.connectionLost(None)
        self.pending[1].callback((200, b"late"))
        self.assertEqual(self.transport.value(), b"")
        self.assertNotIn(self.proto, self.factory.connections)

    def test_upgrade_headers_with_a_body(self):
        """A POST with `Connection: Upgrade` and `Upgrade` headers and a body is served as
        any other, as the original serves it: one answer, then the next request."""
        upgrade = b"Connection: Upgrade\r\nUpgrade: h2c\r\n"
        body = b'{"id":1,"method":"echo","params":[1]}'
        request = post(body, upgrade)
        echo = b'{"error": null, "result": [1], "id": 1}'
        self.proto.dataReceived(request)
        self.assertEqual(self.answers(), [(200, echo)])
        self.assertFalse(self.transport.disconnecting)
        # head and body in separate reads, then another request; and chunked
        head, _, _ = request.partition(b"\r\n\r\n")
        self.proto.dataReceived(head + b"\r\n\r\n")
        self.proto.dataReceived(body + call(2, "echo") + request)
        chunked = (b"POST / HTTP/1.1\r\n" + upgrade + b"Transfer-Encoding: chunked\r\n\r\n" +
                   b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        self.proto.dataReceived(chunked)
        self.assertEqual(self.answers(), [(200, echo), (200, b'{"error": null, "result": '
                                                             b'[], "id": 2}'),
                                          (200, echo), (200, echo)])
        self.assertFalse(self.transport.disconnecting)
        # asked to close: answered, then closed
        self.proto.dataReceived(post(body, b"Connection: Upgrade, close\r\nUpgrade: h2c\r\n"))
        self.assertEqual(self.answers(), [(200, echo)])
        self.assertTrue(self.transport.disconnecting)

    def test_upgrade_without_a_body(self):
        """A request with upgrade headers and no body gets one 400, then the close."""
        for request in (b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
                        post(b"", b"Connection: Upgrade\r\nUpgrade: h2c\r\n"),
                        b"CONNECT x:1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"):
            self.setUp()
            self.proto.dataReceived(request + call(1, "echo"))
            self.assertEqual(self.answers(), [(400, b"")], request)
            self.assertTrue(self.transport.disconnecting)

    def test_date_header(self):
        """The Date header is the RFC 7231 form of the clock's time."""
        self.clock.advance(1795000000)
        self.assertEqual(self.factory.dates.header(), b"Wed, 18 Nov 2026 11:06:40 GMT")


class StuckTransport(StringTransport):
    """A connection whose peer reads nothing: every byte written stays unsent."""

    aborted = False

    def __init__(self):
        super().__init__()
        self.dataBuffer = b""
        self._tempDataLen = 0

    def write(self, data):
        self.dataBuffer += data

    def abortConnection(self):
        self.aborted = True


class HalfClosingTransport(StringTransport):
    """A StringTransport that can shut its writing down alone, as TCP's can."""

    write_shut = False

    def loseWriteConnection(self):
        self.write_shut = True


class SlowReaderTests(SynchronousTestCase):
    """A client that sends requests and does not read the answers."""

    def factory(self, max_output=0):
        return http.HTTPServerFactory({"echo": lambda r: (200, b"x" * 300)}, max_body=1000,
                                      keep_alive=60, max_output=max_output, reactor=Clock())

    def test_unsent_answers_over_max_output_drop_the_connection(self):
        """Once the answers the client left unsent exceed max_output the connection is
        dropped at once, and what it sends next is neither read nor run."""
        factory = self.factory(max_output=1000)
        proto = factory.buildProtocol(None)
        transport = StuckTransport()
        proto.makeConnection(transport)
        proto.dataReceived(call(1, "echo") + call(2, "echo"))
        self.assertFalse(transport.aborted)
        proto.dataReceived(call(3, "echo") + call(4, "echo"))
        self.assertTrue(transport.aborted)
        self.assertEqual(factory.requests, 3)
        proto.dataReceived(call(5, "echo"))
        self.assertEqual(factory.requests, 3)

    def test_no_max_output_no_drop(self):
        """max_output 0 bounds nothing: the connection stays."""
        proto = self.factory().buildProtocol(None)
        transport = StuckTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"".join(call(i, "echo") for i in range(20)))
        self.assertFalse(transport.aborted)

    def test_full_send_buffer_pauses_reading(self):
        """The protocol is its transport's producer: while the send buffer is full no
        request is read; reading resumes when it drains, unless the pipeline is full."""
        proto = self.factory().buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.assertIs(transport.producer, proto)
        self.assertTrue(transport.streaming)
        proto.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        proto.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        proto.paused = True
        proto.pauseProducing()
        proto.resumeProducing()
        self.assertEqual(transport.producerState, "paused")

    def test_idle_connection_of_a_non_reader_closed_at_once(self):
        """An idle connection whose peer left answers unread is closed at keep_alive all
        the same, as the original closes an idle session, not held open waiting for it."""
        factory = self.factory()
        proto = factory.buildProtocol(None)
        transport = StuckTransport()
        proto.makeConnection(transport)
        proto.dataReceived(call(1, "echo"))
        factory.clock.advance(61)
        self.assertTrue(transport.aborted)

    def test_close_of_a_non_reader_has_a_deadline(self):
        """A connection closed after its answers (`Connection: close`, a peer that shut its
        side) whose peer does not take them is cut off after request_timeout."""
        factory = self.factory()
        proto = factory.buildProtocol(None)
        transport = StuckTransport()
        proto.makeConnection(transport)
        proto.dataReceived(call(1, "echo"))
        proto.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        factory.clock.advance(29)
        self.assertFalse(transport.aborted)
        factory.clock.advance(2)
        self.assertTrue(transport.aborted)

    def test_closing_unregisters_the_producer(self):
        """A connection closed after its answers first unregisters itself as producer,
        or a transport whose producer was paused would never close."""
        proto = self.factory().buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(post({"id": 1, "method": "echo", "params": []},
                                b"Connection: close\r\n"))
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)


class FinishTests(SynchronousTestCase):
    """Stopping the server: no more requests read, answers under way written, then close."""

    def setUp(self):
        self.pending = []

        def later(request):
            d = defer.Deferred()
            self.pending.append(d)
            return d
        self.factory = http.HTTPServerFactory({"later": later}, reactor=Clock())

    def connect(self):
        proto = self.factory.buildProtocol(None)
        transport = HalfClosingTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_finish(self):
        """finish runs no more requests, shuts the writing of the idle connections down
        at once and of the others after their answers, and closes each when its peer ends
        its side; it fires when the last one is gone.  What the peers send meanwhile is
        read and dropped: left unread, it would make the kernel reset the connection at its
        close and lose the answers on their way."""
        busy, busy_transport = self.connect()
        idle, idle_transport = self.connect()
        busy.dataReceived(call(1, "later") + call(2, "later"))
        finished = self.factory.finish()
        self.assertEqual(busy_transport.producerState, "producing")
        busy.pauseProducing()       # a full send buffer: reading goes on all the same
        self.assertEqual(busy_transport.producerState, "producing")
        self.assertTrue(idle_transport.write_shut)
        self.assertFalse(busy_transport.write_shut)
        busy.dataReceived(call(3, "later"))
        self.assertEqual(len(self.pending), 2)
        idle.readConnectionLost()
        self.assertTrue(idle_transport.disconnecting)
        idle.connectionLost(None)
        self.pending[1].callback((200, b"two"))
        self.pending[0].callback((200, b"one"))
        self.assertEqual(responses(busy_transport.value()), [(200, b"one"), (200, b"two")])
        self.assertTrue(busy_transport.write_shut)
        self.assertFalse(busy_transport.disconnecting)
        self.assertNoResult(finished)
        busy.readConnectionLost()
        self.assertTrue(busy_transport.disconnecting)
        busy.connectionLost(None)
        self.successResultOf(finished)

    def test_finish_of_a_peer_that_never_ends(self):
        """A peer that neither reads nor ends its side is cut off after request_timeout."""
        proto, transport = self.connect()
        self.factory.finish()
        self.assertTrue(transport.write_shut)
        self.factory.clock.advance(31)
        self.assertTrue(transport.disconnected)

    def test_finish_without_connections(self):
        """With no connection, finish has nothing to wait for."""
        self.successResultOf(self.factory.finish())

    def test_abort(self):
        """abort drops every connection at once."""
        proto, transport = self.connect()
        proto.dataReceived(call(1, "later"))
        self.factory.abort()
        self.assertTrue(transport.disconnected)


class LoopbackTests(TestCase):

    async def scenario(self):
        factory = http.HTTPServerFactory(
            {"echo": lambda r: (200, json.dumps(r.params).encode())})
        port = testing.free_port()
        listening = await address.listen(reactor, "tcp@127.0.0.1:%d" % port, factory)
        self.addCleanup(listening.stopListening)

        def client():
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"".join(call(i, "echo", [i]) for i in range(50)))
                data = b""
                while data.count(b"HTTP/1.1") < 50 or not data.endswith(b"[49]"):
                    data += s.recv(65536)
                return responses(data)
        got = await threads.deferToThread(client)
        self.assertEqual(got, [(200, b"[%d]" % i) for i in range(50)])

    def test_real_socket(self):
        """Fifty pipelined requests over a real keep-alive socket come back in order."""
        return defer.Deferred.fromCoroutine(self.scenario())

    async def reader_scenario(self, max_output):
        """A client on small socket buffers sends up to 10,000 pipelined requests of 10 kB
        answers and reads none; returns the factory once the server reads no more (or
        dropped the connection), with how many requests were sent."""
        answer = b"x" * 10000
        factory = http.HTTPServerFactory({"big": lambda r: (200, answer)},
                                         max_output=max_output)
        port = testing.free_port()
        listening = await address.listen(reactor, "tcp@127.0.0.1:%d" % port, factory,
                                         read_mem=4096, write_mem=4096)
        self.addCleanup(listening.stopListening)
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        while not factory.connections:
            await deferLater(reactor, 0.001)
        request = call(1, "big")
        data = request * 10000
        sent = blocked = 0
        while factory.connections and blocked < 20 and sent < len(data):
            blocked += 1
            try:
                while sent < len(data):
                    sent += sock.send(data[sent:sent + 4096])
                    blocked = 0
            except BlockingIOError:
                await deferLater(reactor, 0.01)
            except OSError:
                break
        read = -1
        while factory.connections and read != factory.requests:
            read = factory.requests
            await deferLater(reactor, 0.1)
        return factory, sent // len(request)

    def test_client_that_does_not_read_is_dropped(self):
        """Over a real socket, a client that pipelines requests and never reads its answers
        is dropped once they pass max_output."""
        async def scenario():
            factory, sent = await self.reader_scenario(max_output=100000)
            self.assertEqual(factory.connections, set())
            self.assertLess(factory.requests, sent)
        return defer.Deferred.fromCoroutine(scenario())

    def test_client_that_does_not_read_is_not_read(self):
        """Without max_output, a client that never reads its answers stops being read
        once its send buffer is full: what the server holds for it stays bounded."""
        async def scenario():
            factory, sent = await self.reader_scenario(max_output=0)
            (connection,) = factory.connections
            self.assertFalse(connection.reading)
            # what one read of requests asks for, at most, beyond a full send buffer
            self.assertLess(factory.requests, 2000)
            self.assertLess(pending_output(connection.transport), 2000 * 10000)
            connection.transport.abortConnection()
        return defer.Deferred.fromCoroutine(scenario())


class FuzzTests(SynchronousTestCase):
    """Whatever a client sends, the server answers in well-formed HTTP or closes; nothing
    it receives raises out of the protocol."""

    pieces = st.one_of(
        st.binary(max_size=60),
        st.sampled_from([b"POST / HTTP/1.1\r\n", b"GET / HTTP/1.0\r\n", b"Host: x\r\n",
                         b"Content-Length: 10\r\n", b"Content-Length: -1\r\n",
                         b"Content-Length: 99999999999999999999\r\n",
                         b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n", b"\r\n",
                         b"Connection: Upgrade\r\nUpgrade: h2c\r\n", b"CONNECT x:1 HTTP/1.1\r\n",
                         b"5\r\nhello\r\n", b"0\r\n\r\n", b"zz\r\n", b'{"id": 1, ',
                         b'"method": "echo", "params": [1]}', b'[1e400]', b"\xff\xfe\x00"]),
        st.builds(lambda body: post(body), st.binary(max_size=40)),
        st.builds(lambda params: call(1, "echo", params),
                  st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3)))

    @settings(max_examples=400, deadline=None)
    @given(st.lists(pieces, min_size=1, max_size=12))
    def test_any_bytes(self, data):
        clock = Clock()
        factory = http.HTTPServerFactory(
            {"echo": lambda request: (200, json.dumps(request.params).encode())},
            max_body=1000, keep_alive=60, request_timeout=5, max_pipeline=4, reactor=clock)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        for piece in data:
            if transport.disconnecting:
                break
            proto.dataReceived(piece)
        clock.advance(10)
        answers = responses(transport.value())
        for status, _ in answers:
            self.assertIn(status, http.REASONS)
        # one answer a request: those run, and the refused one that closes
        self.assertLessEqual(len(answers), factory.requests + 1)
        proto.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])
