# -*- test-case-name: network.test.test_state -*-
"""A table of in-flight entries keyed by id, each with its own timeout.

Gateways use it to match backend replies to the requests that caused them: `add` stores
what is needed to answer and returns the id sent as the RPC sequence number; the reply's
sequence finds it again with `pop`.  An entry left too long is removed and handed to
`on_timeout(state_id, data)`.
"""

from twisted.logger import Logger

__all__ = ["StateTable"]

MAX_ID = 0xFFFFFFFF


class StateTable:
    log = Logger()

    def __init__(self, clock, on_timeout):
        self._clock = clock
        self._on_timeout = on_timeout
        self._entries = {}  # id -> [data, DelayedCall]
        self._last_id = 0

    def _next_id(self):
        state_id = self._last_id
        while True:
            state_id = state_id + 1 if state_id < MAX_ID else 1
            if state_id not in self._entries:
                self._last_id = state_id
                return state_id

    def add(self, data, timeout: float) -> int:
        if len(self._entries) >= MAX_ID:
            raise OverflowError("state table full")
        state_id = self._next_id()
        call = self._clock.callLater(timeout, self._expire, state_id)
        self._entries[state_id] = (data, call)
        return state_id

    def _expire(self, state_id):
        data, _ = self._entries.pop(state_id)
        try:
            self._on_timeout(state_id, data)
        except Exception:
            self.log.failure("timeout handler failed for entry {state_id}", state_id=state_id)

    def get(self, state_id):
        entry = self._entries.get(state_id)
        return None if entry is None else entry[0]

    def pop(self, state_id):
        entry = self._entries.pop(state_id, None)
        if entry is None:
            return None
        entry[1].cancel()
        return entry[0]

    def clear(self):
        for _, call in self._entries.values():
            call.cancel()
        self._entries.clear()

    def __len__(self):
        return len(self._entries)

    def __contains__(self, state_id):
        return state_id in self._entries

    def __iter__(self):
        return iter(list(self._entries))
