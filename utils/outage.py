"""An outage told in a few log lines rather than one for each retry.

Work that retries against a service that is away (a Kafka broker, a MySQL or Redis server)
fails again every second or so.  A critical line for each attempt is an alert mail a second
(alertcenter mails every fatal line), and a line of any level for each one buries the rest of
the log; with nothing said when the work goes through again, the reader cannot tell when the
outage ended.
"""

import threading
import time

from twisted.logger import LogLevel

__all__ = ["ALERT_AFTER", "Outage", "on_log"]

# how long an outage lasts before its alert, by default: a blip a retry cures raises none
ALERT_AFTER = 10.0


def on_log(logger):
    """A `say` for an `Outage` that writes its lines on `logger` (a `twisted.logger.Logger`)."""
    return lambda level, text: logger.emit(level, "{text}", text=text)


class Outage:
    """The failures of one kind of work, told as the outage goes.

    - the first failure: an error line, `name: problem` (critical with an `alert_after` of
      0: a service whose every failure is felt at once);
    - once it has failed for `alert_after` seconds: a critical line, which is an alert (None:
      none: the alert centre itself, and a gateway's workers other than worker 0); a blip
      that a retry or two cures raises none;
    - while it lasts: an error line every `repeat` seconds, with how long and how many
      attempts;
    - the first success after it: a warning saying how long it failed.

    `say(level, text)` writes a line, `level` a `twisted.logger.LogLevel`.  Threads may share
    one (a writer's history connections): the lines are told under a lock, and `succeeded`,
    called after each piece of work, costs one attribute read while nothing fails.  Sharers
    name themselves (`who`): the outage ends once each that failed has succeeded again, or
    has not failed for `repeat` seconds (it stopped trying: a gateway's method no client
    calls any more), so that one whose work keeps failing (a statement MySQL refuses) is not
    hidden by the others' successes."""

    def __init__(self, name, say, alert_after=ALERT_AFTER, repeat=60.0, clock=time.monotonic):
        self.name = name
        self.say = say
        self.alert_after = alert_after
        self.repeat = repeat
        self.clock = clock
        self.since = None       # when the outage began; None: no outage
        self.attempts = 0       # failed attempts in it
        self._told = 0.0        # when its last line was said
        self._alerted = False
        self._failing = {}      # the sharers whose last attempt failed: when it did
        self._lock = threading.Lock()

    def failed(self, problem, who=None):
        """An attempt of `who` failed with `problem`, a text ("insert failed: ...; retrying
        in 1 s")."""
        with self._lock:
            now = self.clock()
            if self.since is not None and now - max(self._failing.values()) >= self.repeat:
                # nothing failed or went through for a while: what failed stopped trying,
                # and this failure begins an outage of its own
                self.since = None
                self._failing.clear()
            self._failing[who] = now
            if self.since is None:
                self.since, self._told, self.attempts = now, now, 1
                at_once = self.alert_after is not None and self.alert_after <= 0
                self._alerted = at_once or self.alert_after is None
                self.say(LogLevel.critical if at_once else LogLevel.error,
                         "%s: %s" % (self.name, problem))
                return
            self.attempts += 1
            lasted = now - self.since
            if not self._alerted and lasted >= self.alert_after:
                self._alerted = True
                level = LogLevel.critical
            elif now - self._told >= self.repeat:
                level = LogLevel.error
            else:
                return
            self._told = now
            self.say(level, "%s: failing for %d s, %d attempts: %s"
                     % (self.name, lasted, self.attempts, problem))

    def succeeded(self, who=None):
        """The work of `who` went through: the end of the outage, if there was one and no
        other sharer's work still fails."""
        if self.since is None:
            return
        with self._lock:
            if self.since is None:
                return
            now = self.clock()
            self._failing.pop(who, None)
            for sharer, last in list(self._failing.items()):
                if now - last >= self.repeat:
                    del self._failing[sharer]
            if self._failing:
                return
            lasted, attempts = now - self.since, self.attempts
            self.since = None
            self.say(LogLevel.warn, "%s: working again after %.1f s, %d failed attempts"
                     % (self.name, lasted, attempts))
