"""A keep-alive HTTP connection sending JSON-RPC calls one at a time, for the load scripts."""

import json
import time

import httptools
from twisted.internet import protocol


class KeepAliveClient(protocol.Protocol):
    """Posts the request `next_request()` gives, waits for its reply, posts the next.

    `next_request()` returns a JSON-RPC request object, or None to close the connection and
    fire `done`; `replied(request, reply, elapsed)` is called with each decoded reply.
    """

    def __init__(self, next_request, replied, done):
        self.next_request = next_request
        self.replied = replied
        self.done = done
        self.parser = httptools.HttpResponseParser(self)
        self.body = []
        self.request = None
        self.start = 0.0

    def connectionMade(self):
        self.send_next()

    def send_next(self):
        self.request = self.next_request()
        if self.request is None:
            self.transport.loseConnection()
            self.done.callback(None)
            return
        body = json.dumps(self.request).encode()
        self.start = time.perf_counter()
        self.transport.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))

    def dataReceived(self, data):
        self.parser.feed_data(data)

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        elapsed = time.perf_counter() - self.start
        reply = json.loads(b"".join(self.body))
        self.body = []
        self.replied(self.request, reply, elapsed)
        self.send_next()
