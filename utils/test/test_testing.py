"""The test helpers: the choice of ports, the RPC call, the websocket client."""

import socket

from twisted.trial.unittest import SynchronousTestCase

from utils import testing


class FreePortTests(SynchronousTestCase):

    def test_outside_ephemeral_range_and_never_twice(self):
        low, high = testing._ephemeral_range()
        ports = [testing.free_port() for _ in range(50)]
        self.assertEqual(len(set(ports)), len(ports))
        for port in ports:
            self.assertFalse(low <= port <= high, port)
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))

    def test_port_in_use_skipped(self):
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        given = testing.free_port()
        testing._given.discard(given)
        self.patch(testing.random, "sample", lambda population, k: [taken, given])
        self.assertEqual(testing.free_port(), given)
        # handed out once: the same candidates now leave nothing
        self.assertRaises(RuntimeError, testing.free_port)


class WSClientTests(SynchronousTestCase):

    def client(self):
        """A WSClient over one end of a socket pair (no handshake), and the other end."""
        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        client = testing.WSClient.__new__(testing.WSClient)
        client.sock, client.buffer = ours, b""
        return client, peer

    def test_frame_in_parts(self):
        """A frame come in part is kept through a timeout; `pending` says when one is
        whole."""
        client, peer = self.client()
        frame = b"\x81\x7e\x00\xc8" + b"x" * 200       # 200 bytes: a 16-bit length
        peer.sendall(frame[:3])
        self.assertRaises(TimeoutError, client.recv, 0.05)
        self.assertFalse(client.pending())
        peer.sendall(frame[3:] + b"\x81\x02ok")
        self.assertEqual(client.recv(1), "x" * 200)
        self.assertTrue(client.pending())
        self.assertEqual(client.recv(1), "ok")

    def test_ping_answered(self):
        client, peer = self.client()
        peer.sendall(b"\x89\x02hi\x81\x01!")
        self.assertEqual(client.recv(1), "!")
        pong = peer.recv(100)
        self.assertEqual(pong[0], 0x8A)
        self.assertEqual(bytes(b ^ pong[2 + n % 4] for n, b in enumerate(pong[6:])), b"hi")

    def test_close(self):
        client, peer = self.client()
        peer.sendall(b"\x88\x02\x03\xe8")
        self.assertRaises(ConnectionError, client.recv, 1)
        self.assertEqual(client.close_code, 1000)


class RPCCallTests(SynchronousTestCase):

    def test_reply_or_none(self):
        """The reply's body; None when nothing comes in time or the peer closes."""
        from utils import rpc
        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        ours.settimeout(0.05)
        reply = rpc.encode(rpc.Packet(101, rpc.REPLY, 1, 0, b'{"result": 1}'))
        self.assertIsNone(testing.rpc_call(ours, 101, b"[1]"))        # nothing came
        peer.sendall(reply[:10])
        peer.sendall(reply[10:])
        self.assertEqual(testing.rpc_call(ours, 101, b"[2]"), b'{"result": 1}')
        sent = rpc.StreamDecoder(1 << 20).feed(peer.recv(1 << 16))
        self.assertEqual([(p.command, p.body) for p in sent], [(101, b"[1]"), (101, b"[2]")])
        peer.shutdown(socket.SHUT_WR)                                   # the peer closes
        self.assertIsNone(testing.rpc_call(ours, 101, b"[3]"))
