# -*- test-case-name: alertcenter.test.test_send_alert -*-
"""Mail the alerts alertcenter collects: `python -m alertcenter.send_alert --config PATH`.

Reads alerts from the head of the Redis list `alert:message` (through the sentinels of the
config's `redis` section) and mails them with the `mail` section's SMTP settings.  At most
one mail goes out per `mail.interval` seconds (60 by default, as the original); alerts that
arrive in between are not dropped but gathered into the next mail, at most `BATCH` a mail.

An alert leaves the list only once the mail that carries it was accepted (LRANGE, mail, then
LTRIM: this script is the list's only reader, alertcenter only appends), so that a stop or a
crash at any moment loses none; one may be mailed twice.  A mail the server refuses for good
(a 5xx answer) is tried again with half as many alerts, down to one; a single alert refused
for good is logged as critical with its text and dropped, so that it cannot hold back the
others.  Any other failure is retried every 10 s.
"""

import argparse
import sys
import time
from email.message import EmailMessage

from twisted.internet import defer, task
from twisted.logger import Logger

from alertcenter.server import KEY

log = Logger()

# alerts in one mail: each is at most 10,240 bytes (utils.alert), a mail at most about 1 MB
BATCH = 100


def refused_for_good(error):
    """Whether an SMTP failure is a permanent refusal (a 5xx reply)."""
    code = getattr(error, "code", None)
    return isinstance(code, int) and 500 <= code < 600


class Mailer:

    def __init__(self, store, mail, reactor, clock_time=time.time, wait=60, poll=1.0):
        self.store = store
        self.mail = mail
        self.reactor = reactor
        self.clock_time = clock_time
        self.wait = wait            # how long run_once waits for a first alert
        self.poll = poll            # how often an empty list is looked at again
        self.batch = BATCH
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
        """Wait out the interval and for alerts (up to `wait` seconds), mail those at the
        head of the list, then take them off it; returns how many were mailed."""
        pause = self.last_sent + self.mail["interval"] - self.clock_time()
        if pause > 0:
            await task.deferLater(self.reactor, pause, lambda: None)
        conn = await self.store.connect()
        try:
            return await self._mail_head(conn)
        finally:
            conn.disconnect()

    async def _mail_head(self, conn):
        waited = 0.0
        while True:
            alerts = await conn.lrange(KEY, 0, self.batch - 1)
            if alerts or waited >= self.wait:
                break
            await task.deferLater(self.reactor, self.poll, lambda: None)
            waited += self.poll
        if not alerts:
            return 0
        try:
            await self.send(alerts)
        except Exception as e:
            if not refused_for_good(e):
                log.error("send_alert: mailing {count} alerts failed ({error}); they stay in "
                          "the list", count=len(alerts), error=e)
                raise
            if len(alerts) > 1:
                self.batch = max(1, len(alerts) // 2)
                log.error("send_alert: the mail server refuses a mail of {count} alerts "
                          "({error}); trying {batch} at a time", count=len(alerts), error=e,
                          batch=self.batch)
                return 0
            log.critical("send_alert: the mail server refuses this alert for good ({error}); "
                         "dropping it: {alert}", error=e, alert=alerts[0])
            await conn.ltrim(KEY, 1, -1)
            return 0
        await conn.ltrim(KEY, len(alerts), -1)
        self.batch = min(BATCH, self.batch * 2)
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
        return defer.Deferred.fromCoroutine(Mailer(store, cfg.mail, reactor).run())
    task.react(run)


if __name__ == "__main__":
    main()
