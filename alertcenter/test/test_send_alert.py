# -*- test-case-name: alertcenter.test.test_send_alert -*-
"""The mail script against a real Redis and an SMTP server run by the test."""

import email

from twisted.internet import defer, reactor
from twisted.mail import smtp
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from alertcenter.send_alert import Mailer
from alertcenter.server import KEY
from utils import redisdb, testing

REDIS_DB = 5


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, box):
        self.box = box
        self.lines = []

    def lineReceived(self, line):
        self.lines.append(line)

    def eomReceived(self):
        self.box.append(email.message_from_bytes(b"\n".join(self.lines)))
        return defer.succeed(None)

    def connectionLost(self):
        """Nothing to clean up: the messages are already in the box."""


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, box):
        self.box = box

    def receivedHeader(self, helo, origin, recipients):
        return b"Received: test"

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        return lambda: _Message(self.box)


class _SMTPFactory(smtp.SMTPFactory):
    def __init__(self, box):
        super().__init__()
        self.delivery = _Delivery(box)

    def buildProtocol(self, addr):
        p = smtp.SMTP()
        p.delivery = self.delivery
        p.factory = self
        return p


class MailTests(TestCase):

    timeout = 60

    async def scenario(self):
        info = testing.require("redis")
        store = redisdb.Plain(info["host"], info["port"], db=REDIS_DB, timeout=10)
        conn = await store.connect()
        self.addCleanup(conn.disconnect)
        await conn.delete(KEY)
        self.addCleanup(conn.delete, KEY)
        box = []
        port = reactor.listenTCP(0, _SMTPFactory(box), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        mail = {"host": "127.0.0.1", "port": port.getHost().port, "user": "", "password": "",
                "starttls": False, "sender": "alerts@localhost",
                "recipients": ["ops@localhost"], "subject": "viabtc server error",
                "interval": 0.5}
        mailer = Mailer(store, mail, reactor, wait=2)
        await conn.rpush(KEY, "matchengine: [fatal]first")
        self.assertEqual(await mailer.run_once(), 1)
        # two more within the interval: gathered into one mail, none dropped
        await conn.rpush(KEY, "accessws: [fatal]second")
        await conn.rpush(KEY, "accessws: [fatal]third")
        self.assertEqual(await mailer.run_once(), 2)
        self.assertEqual(await mailer.run_once(), 0)       # nothing within the wait
        self.assertEqual(len(box), 2)
        self.assertEqual(box[0]["Subject"], "viabtc server error")
        self.assertEqual(box[1]["Subject"], "viabtc server error (2 alerts)")
        self.assertEqual(box[1].get_payload(decode=True).decode().split("\n")[:2],
                         ["accessws: [fatal]second", "accessws: [fatal]third"])
        self.assertEqual(await conn.llen(KEY), 0)

    def test_mails(self):
        """Alerts are mailed, those of one interval in one mail, and leave the list."""
        return defer.Deferred.fromCoroutine(self.scenario())
