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
others.  A failure that is neither the mail server's answer nor the network's (a mail that
cannot be made of these alerts) is taken as a refusal for good.  Other failures (a refusal
that is not for good, a server out of reach, Redis away) are retried every 10 s; but a
database number the Redis server refuses (`redis.db` past the databases it has) before the
script has once connected is a mistake of the config, which ends it.

List entries are read as UTF-8; an entry that is not valid UTF-8 (another writer's bytes) is
mailed with its bad bytes replaced by U+FFFD.
"""

import argparse
import sys
import time
from email.message import EmailMessage

from twisted.internet import defer, task
from twisted.internet import error as internet_error
from twisted.logger import Logger, LogLevel
from twisted.mail.smtp import SMTPError

from alertcenter.server import KEY
from utils.config import ConfigError
from utils.redisdb import ConfigChecked

log = Logger()

# alerts in one mail: each is at most 10,240 bytes (utils.alert), a mail at most about 1 MB
BATCH = 100


def refused_for_good(error):
    """Whether an SMTP failure is a permanent refusal (a 5xx reply)."""
    code = getattr(error, "code", None)
    return isinstance(code, int) and 500 <= code < 600


# what a mail server out of reach, or a connection that breaks, fails with
NETWORK_ERRORS = (OSError, internet_error.ConnectError, internet_error.ConnectionClosed,
                  internet_error.TimeoutError, defer.CancelledError)


def worth_retrying(exc):
    """Whether a failure to mail may pass by itself: an SMTP answer that is not a refusal
    for good, or a network error.  Anything else (an alert the mail cannot be made of)
    would fail the same way forever and is handled as a refusal for good."""
    if isinstance(exc, SMTPError):
        return not refused_for_good(exc)
    return isinstance(exc, NETWORK_ERRORS)


def as_text(entry):
    """A list entry as text: the Redis client hands back as bytes an entry that is not
    valid UTF-8, whose bad bytes are replaced here."""
    if isinstance(entry, bytes):
        return entry.decode("utf-8", "replace")
    return entry


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
        self.redis = ConfigChecked(store)

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
        conn = await self.redis.connect()
        try:
            return await self._mail_head(conn)
        finally:
            conn.disconnect()

    async def _mail_head(self, conn):
        waited = 0.0
        while True:
            alerts = [as_text(entry) for entry in await conn.lrange(KEY, 0, self.batch - 1)]
            if alerts or waited >= self.wait:
                break
            await task.deferLater(self.reactor, self.poll, lambda: None)
            waited += self.poll
        if not alerts:
            return 0
        try:
            await self.send(alerts)
        except Exception as e:
            if worth_retrying(e):
                log.error("send_alert: mailing {count} alerts failed ({error}); they stay in "
                          "the list", count=len(alerts), error=e)
                raise
            if not isinstance(e, SMTPError):
                log.failure("send_alert: no mail could be made of {count} alerts",
                            count=len(alerts), level=LogLevel.error)
            if len(alerts) > 1:
                self.batch = max(1, len(alerts) // 2)
                log.error("send_alert: a mail of {count} alerts cannot go ({error}); trying "
                          "{batch} at a time", count=len(alerts), error=e, batch=self.batch)
                return 0
            log.critical("send_alert: this alert cannot be mailed ({error}); dropping it: "
                         "{alert}", error=e, alert=alerts[0])
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
            except ConfigError:
                raise
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
    try:
        cfg = config.load(args.config)
    except (ConfigError, OSError) as e:
        # the message names the file and the key: nothing a traceback would add
        raise SystemExit(str(e)) from None
    if cfg.mail is None:
        raise SystemExit("%s: no `mail` section: nowhere to send alerts" % args.config)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])

    def refused(failure):
        # one line naming the file and the key, as a config that cannot be loaded (on the
        # real stderr: the log took sys.stderr over)
        failure.trap(ConfigError)
        print("%s: %s" % (args.config, failure.getErrorMessage()), file=sys.__stderr__,
              flush=True)
        raise SystemExit(1)

    def run(reactor):
        store = redisdb.from_config(cfg.redis)
        d = defer.Deferred.fromCoroutine(Mailer(store, cfg.mail, reactor).run())
        return d.addErrback(refused)
    task.react(run)


if __name__ == "__main__":
    main()
