# -*- test-case-name: alertcenter.test.test_send_alert -*-
"""Mail the alerts alertcenter collects: `python -m alertcenter.send_alert --config PATH`.

Takes alerts from the head of the Redis list `alert:message` (BLPOP, through the sentinels of
the config's `redis` section) and mails them with the `mail` section's SMTP settings.  At most
one mail goes out per `mail.interval` seconds (60 by default, as the original); alerts that
arrive in between are not dropped but gathered into the next mail.  An alert is taken off the
list only after the mail that carries it was accepted: if mailing fails they are put back at
the head of the list and tried again.
"""

import argparse
import sys
import time
from email.message import EmailMessage

from twisted.internet import defer, task
from twisted.logger import Logger

from alertcenter.server import KEY

log = Logger()


class Mailer:

    def __init__(self, store, mail, reactor, clock_time=time.time, wait=60):
        self.store = store
        self.mail = mail
        self.reactor = reactor
        self.clock_time = clock_time
        self.wait = wait
        self.last_sent = 0.0
        self.sent = 0

    def compose(self, alerts):
        message = EmailMessage()
        message["Subject"] = self.mail["subject"] + (
            " (%d alerts)" % len(alerts) if len(alerts) > 1 else "")
        message["From"] = self.mail["sender"]
        message["To"] = ", ".join(self.mail["recipients"])
        message.set_content("\n".join(alerts) + "\n", charset="utf-8")
        return message.as_bytes()

    def send(self, alerts):
        from twisted.mail.smtp import sendmail
        mail = self.mail
        return sendmail(mail["host"], mail["sender"], list(mail["recipients"]),
                        self.compose(alerts), port=mail["port"],
                        username=mail["user"] or None, password=mail["password"] or None,
                        requireAuthentication=bool(mail["user"]),
                        requireTransportSecurity=mail["starttls"], reactor=self.reactor)

    async def run_once(self):
        """Wait for alerts, gather those of the interval, mail them; returns how many."""
        conn = await self.store.connect()
        try:
            first = await conn.blpop([KEY], timeout=self.wait)
            if not first:
                return 0
            alerts = [first[1]]
            pause = self.last_sent + self.mail["interval"] - self.clock_time()
            if pause > 0:
                await task.deferLater(self.reactor, pause, lambda: None)
            while True:
                more = await conn.lpop(KEY)
                if more is None:
                    break
                alerts.append(more)
        finally:
            conn.disconnect()
        try:
            await self.send(alerts)
        except Exception as e:
            log.error("send_alert: mailing {count} alerts failed ({error}); they go back to "
                      "the list", count=len(alerts), error=e)
            conn = await self.store.connect()
            try:
                for alert in reversed(alerts):
                    await conn.lpush(KEY, alert)
            finally:
                conn.disconnect()
            raise
        self.last_sent = self.clock_time()
        self.sent += len(alerts)
        log.info("send_alert: mailed {count} alerts", count=len(alerts))
        return len(alerts)

    async def run(self):
        while True:
            try:
                await self.run_once()
            except Exception:
                log.failure("send_alert: will try again in 10 s")
                await task.deferLater(self.reactor, 10, lambda: None)


def main(argv=None):
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from alertcenter import config
    from utils import redisdb
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="conf/config.json")
    args = parser.parse_args(argv)
    cfg = config.load(args.config)
    if cfg.mail is None:
        raise SystemExit("%s: no `mail` section: nowhere to send alerts" % args.config)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])

    def run(reactor):
        store = redisdb.from_config(cfg.redis)
        store.timeout = 70.0      # a reply can take the whole BLPOP wait
        return defer.Deferred.fromCoroutine(Mailer(store, cfg.mail, reactor).run())
    task.react(run)


if __name__ == "__main__":
    main()
