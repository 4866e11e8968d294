# -*- test-case-name: alertcenter.test.test_send_alert -*-
"""The mail script against a real Redis and an SMTP server run by the test."""

import email
import json
import os
import subprocess
import sys

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory
from twisted.logger import LogLevel, capturedLogs
from twisted.mail import smtp
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from alertcenter.send_alert import Mailer, main
from alertcenter.server import KEY
from utils import redisdb, testing
from utils.testing import until

# a Redis database each test of its own: tests run in parallel (trial -j)
REDIS_DBS = {"scenario": 4, "waiting": 14, "refusals": 15, "undecodable": 9, "unmailable": 3}


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


async def alert_list(test, db):
    """A store of the test Redis and a connection to it, `alert:message` emptied now and
    when `test` ends."""
    info = testing.require("redis")
    store = redisdb.Plain(info["host"], info["port"], db=db, timeout=10)
    conn = await store.connect()
    test.addCleanup(conn.disconnect)
    await conn.delete(KEY)
    test.addCleanup(conn.delete, KEY)
    return store, conn


class MailTests(TestCase):

    timeout = 60

    def mail_server(self, box):
        """The `mail` section of an SMTP server that puts what it takes in `box`."""
        port = reactor.listenTCP(0, _SMTPFactory(box), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return {"host": "127.0.0.1", "port": port.getHost().port, "user": "", "password": "",
                "starttls": False, "sender": "alerts@localhost",
                "recipients": ["ops@localhost"], "subject": "viabtc server error",
                "interval": 0.5}

    async def scenario(self):
        store, conn = await alert_list(self, REDIS_DBS["scenario"])
        box = []
        mailer = Mailer(store, self.mail_server(box), reactor, wait=2)
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

    async def undecodable(self):
        store, conn = await alert_list(self, REDIS_DBS["undecodable"])
        box = []
        mailer = Mailer(store, self.mail_server(box), reactor, wait=2)
        await conn.rpush(KEY, "me: one")
        await conn.rpush(KEY, "me: two")
        await conn.rpush(KEY, b"me: bad \xff byte")
        self.assertEqual(await mailer.run_once(), 3)
        self.assertEqual(len(box), 1)
        self.assertEqual(box[0].get_payload(decode=True).decode().split("\n")[:3],
                         ["me: one", "me: two", "me: bad \ufffd byte"])
        self.assertEqual(await conn.llen(KEY), 0)

    def test_undecodable_entry(self):
        """An entry of the list that is not valid UTF-8 is mailed with its bad bytes
        replaced, with the alerts beside it, and leaves the list."""
        return defer.Deferred.fromCoroutine(self.undecodable())


class _Judging(LineReceiver):
    """A bare SMTP server whose answer to each mail's DATA is `judge(alert lines)`."""

    delimiter = b"\r\n"

    def __init__(self, judge, box, open_connections):
        self.judge, self.box, self.data = judge, box, None
        self.open_connections = open_connections

    def connectionMade(self):
        self.open_connections.append(self)
        self.sendLine(b"220 test")

    def connectionLost(self, reason):
        self.open_connections.remove(self)

    def lineReceived(self, line):
        if self.data is not None:
            if line != b".":
                self.data.append(line.decode())
                return
            alerts = [text for text in self.data if ": [fatal]" in text]
            self.data = None
            code = self.judge(alerts)
            if code == 250:
                self.box.append(alerts)
            self.sendLine(b"%d judged" % code)
        elif line.upper().startswith(b"DATA"):
            self.data = []
            self.sendLine(b"354 go on")
        elif line.upper().startswith(b"QUIT"):
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 ok")


class DurabilityTests(TestCase):

    timeout = 60

    async def setup(self, judge, db):
        store, conn = await alert_list(self, db)
        box, open_connections = [], []
        port = reactor.listenTCP(
            0, Factory.forProtocol(lambda: _Judging(judge, box, open_connections)),
            interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        async def closed():
            # a failed mail's client closes after its Deferred failed
            await until(lambda: not open_connections, 5, "SMTP connections closed")
            await deferLater(0.01)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(closed()))
        mail = {"host": "127.0.0.1", "port": port.getHost().port, "user": "", "password": "",
                "starttls": False, "sender": "alerts@localhost",
                "recipients": ["ops@localhost"], "subject": "viabtc server error",
                "interval": 0.3}
        return conn, box, Mailer(store, mail, reactor, wait=0.2, poll=0.05)

    async def waiting(self):
        conn, box, mailer = await self.setup(lambda alerts: 451, REDIS_DBS["waiting"])
        await conn.rpush(KEY, "h: [fatal]one")
        mailer.last_sent = mailer.clock_time()
        running = defer.Deferred.fromCoroutine(mailer.run_once())
        # during the interval's pause, and after a mail that failed, the alert is listed
        await deferLater(0.1)
        self.assertEqual(await conn.lrange(KEY, 0, -1), ["h: [fatal]one"])
        with self.assertRaises(Exception):
            await running
        self.assertEqual(await conn.lrange(KEY, 0, -1), ["h: [fatal]one"])
        self.assertEqual(box, [])

    def test_alerts_stay_listed_until_mailed(self):
        """An alert leaves the list only once its mail was accepted: not while the mailer
        waits out the interval, nor when the mail fails."""
        return defer.Deferred.fromCoroutine(self.waiting())

    async def refusals(self):
        def judge(alerts):
            if any("poison" in alert for alert in alerts):
                return 554
            return 552 if len(alerts) > 2 else 250
        conn, box, mailer = await self.setup(judge, REDIS_DBS["refusals"])
        mailer.mail["interval"] = 0
        names = ["a1", "a2", "poison", "a3", "a4", "a5"]
        for name in names:
            await conn.rpush(KEY, "h: [fatal]" + name)
        with capturedLogs() as events:
            for _ in range(20):
                if not await conn.llen(KEY):
                    break
                await mailer.run_once()
        self.assertEqual(await conn.llen(KEY), 0)
        self.assertEqual([alert[len("h: [fatal]"):] for mail in box for alert in mail],
                         ["a1", "a2", "a3", "a4", "a5"])
        self.assertTrue(all(len(mail) <= 2 for mail in box))
        dropped = [e for e in events if e["log_level"] == LogLevel.critical]
        self.assertEqual([e["alert"] for e in dropped], ["h: [fatal]poison"])

    def test_refused_for_good(self):
        """A mail refused for good is tried with fewer alerts; an alert refused on its own
        is dropped with a critical line, and the others are mailed in order."""
        return defer.Deferred.fromCoroutine(self.refusals())

    async def unmailable(self):
        conn, box, mailer = await self.setup(lambda alerts: 250, REDIS_DBS["unmailable"])
        mailer.mail["interval"] = 0
        compose = mailer.compose

        def failing_compose(alerts):
            if any("poison" in alert for alert in alerts):
                raise ValueError("no mail can be made of this")
            return compose(alerts)
        mailer.compose = failing_compose
        for name in ["a1", "poison", "a2"]:
            await conn.rpush(KEY, "h: [fatal]" + name)
        with capturedLogs() as events:
            for _ in range(10):
                if not await conn.llen(KEY):
                    break
                await mailer.run_once()
        self.assertEqual(await conn.llen(KEY), 0)
        self.assertEqual([alert[len("h: [fatal]"):] for mail in box for alert in mail],
                         ["a1", "a2"])
        dropped = [e for e in events if e["log_level"] == LogLevel.critical]
        self.assertEqual([e["alert"] for e in dropped], ["h: [fatal]poison"])
        # three mails failed: [a1 poison a2], [poison a2], [poison]
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 3)

    def test_unmailable_alert(self):
        """An alert no mail can be made of (a failure that is neither an SMTP answer nor a
        network error) is dropped as one refused for good: it does not hold the others
        back forever."""
        return defer.Deferred.fromCoroutine(self.unmailable())


class ConfigTests(SynchronousTestCase):
    """A config the script cannot use ends it with one line naming the file and the key."""

    def config(self, **sections):
        path = self.mktemp()
        data = {"log": {"path": "log/alertcenter", "flag": "fatal"},
                "svr": {"bind": ["udp@127.0.0.1:4444"], "max_pkg_size": 10240},
                "redis": {"name": "mymaster", "addr": ["127.0.0.1:26381"]}}
        data.update(sections)
        with open(path, "w") as f:
            json.dump(data, f)
        return path

    def test_missing_file(self):
        """A config file that is not there: its name and why, no traceback."""
        with self.assertRaises(SystemExit) as caught:
            main(["--config", "/nonexistent/config.json"])
        self.assertEqual(caught.exception.code,
                         "/nonexistent/config.json: cannot read: No such file or directory")

    def test_mail_without_recipients(self):
        """A mail section without recipients: the key is named."""
        path = self.config(mail={"sender": "alerts@localhost"})
        with self.assertRaises(SystemExit) as caught:
            main(["--config", path])
        self.assertEqual(caught.exception.code,
                         "%s: mail.recipients: required key missing" % path)

    def test_no_mail_section(self):
        """A config without a mail section: nowhere to send alerts."""
        path = self.config()
        with self.assertRaises(SystemExit) as caught:
            main(["--config", path])
        self.assertIn("no `mail` section", caught.exception.code)

    def test_database_refused(self):
        """`redis.db` past the databases of the Redis master (10000; it has 16) ends the
        script with exit status 1 and a line on stderr naming the file and the key;
        it used to try again every 10 s for ever."""
        sentinel = testing.require("sentinel")
        redis = testing.require("redis")
        path = os.path.abspath(self.config(
            redis={"name": sentinel["name"], "addr": sentinel["addr"], "db": 10000},
            mail={"sender": "alerts@localhost", "recipients": ["ops@localhost"]}))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [testing.ROOT,
                                                          env.get("PYTHONPATH")]))
        proc = subprocess.Popen([sys.executable, "-m", "alertcenter.send_alert", "--config",
                                 path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        self.assertEqual(proc.returncode, 1, err.decode())
        self.assertIn("%s: redis.db: database 10000 refused by redis master %r at %s:%d: ERR "
                      "DB index is out of range"
                      % (path, sentinel["name"], redis["host"], int(redis["port"])),
                      err.decode().splitlines())


def deferLater(seconds):
    from twisted.internet import task
    return task.deferLater(reactor, seconds, lambda: None)
