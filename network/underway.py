# -*- test-case-name: network.test.test_underway -*-
"""Counting what is under way, so that a stop can wait for the last of it.

    calls = UnderWay()
    calls.track(client.call_raw(...))           # counted until it fires
    ...
    await within(clock, calls.ended(), timeout)  # at a stop: the last of them, or a deadline

`OpenSet` does the same for a server's open connections.
"""

from twisted.internet import defer

__all__ = ["UnderWay", "OpenSet"]


class UnderWay:
    """How many of the Deferreds given to `track` have not fired yet (`count`)."""

    def __init__(self):
        self.count = 0
        self._waiting = []       # Deferreds of `ended`, fired when the count comes to 0

    def track(self, d):
        """Count `d` until it fires; returns it, its result passing through unchanged."""
        self.count += 1
        d.addBoth(self._ended)
        return d

    def ended(self):
        """A Deferred that fires once nothing is under way (at once when nothing is)."""
        if not self.count:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def _ended(self, result):
        self.count -= 1
        if not self.count:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)
        return result


class OpenSet(set):
    """A server's open connections (added when made, discarded when lost), and for a stop a
    Deferred that fires once the last has closed (`closed`).  The server calls `settle()`
    when it is done with a connection it discarded, so that what waits goes on only after
    that."""

    def __init__(self):
        super().__init__()
        self._waiting = []

    def closed(self):
        """A Deferred that fires once no connection is open (at once when none is)."""
        if not self:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def settle(self):
        """Fire what waits in `closed` when no connection is left."""
        if not self and self._waiting:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)
