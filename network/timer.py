# -*- test-case-name: network.test.test_timer -*-
"""One-shot and repeating timers on a reactor clock (testable with `task.Clock`).

A repeating timer keeps running when its callback raises: the failure is logged and the
next tick comes as scheduled.
"""

from twisted.internet import defer
from twisted.logger import Logger

__all__ = ["Timer", "within"]


def within(clock, d, seconds):
    """A Deferred that fires True when `d` fires, or False after `seconds` if that comes
    first; `d` goes on as it was (its result passes through)."""
    out = defer.Deferred()
    call = clock.callLater(seconds, out.callback, False)

    def fired(result):
        if call.active():
            call.cancel()
            out.callback(True)
        return result
    d.addBoth(fired)
    return out


class Timer:
    log = Logger()

    def __init__(self, clock, interval: float, callback, repeat: bool = False, name: str = ""):
        if interval < 0:
            raise ValueError("timer interval must not be negative: %r" % (interval,))
        self._clock = clock
        self.interval = interval
        self._callback = callback
        self.repeat = repeat
        self.name = name or getattr(callback, "__name__", "timer")
        self._call = None

    @property
    def running(self) -> bool:
        return self._call is not None

    def start(self):
        """Arm the timer (re-arming it if it was running)."""
        self.stop()
        self._call = self._clock.callLater(self.interval, self._fire)
        return self

    def stop(self):
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _fire(self):
        self._call = None
        if self.repeat:
            self._call = self._clock.callLater(self.interval, self._fire)
        try:
            self._callback()
        except Exception:
            self.log.failure("timer {name} callback failed", name=self.name)
