# -*- test-case-name: matchengine.test.test_balance -*-
"""Every user's available and frozen funds, per asset.

An entry is keyed by (user_id, asset); it is the tuple (available, freeze), replaced at each
change.  A missing entry or a missing side (None) is zero; entries that drop to zero on both
sides are removed.  Every stored value is truncated to the asset's `prec_save` after each
change and is never negative.  Operations that cannot be done (not enough funds) return
False and change nothing.

Tuples of decimals leave the garbage collector's reach after its first pass over them, so
entries made after start add nothing to later collections (as lists, always tracked, a
million of them made a full collection last about 0.2 s).
"""

from decimal import ROUND_DOWN, Decimal

from utils.decimals import CONTEXT, ZERO, exponent

AVAILABLE, FREEZE = 1, 2

_EMPTY = (None, None)


def _total(available, frozen):
    """The sum of an entry's sides (None for a missing one).  The original sums from zero:
    a stored value is positive with the asset's prec_save exponent, so adding it to zero
    gives it back unchanged, digits and exponent, as returning it does."""
    if available is None:
        return ZERO if frozen is None else frozen
    return available if frozen is None else available + frozen


class Balances:

    __slots__ = ("assets", "entries", "fees", "_exp", "_cut", "_room")

    def __init__(self, assets, whole=()):
        """`whole` names the assets in which every amount `trade` and `_move` move is a
        whole number of the asset's smallest stored unit (1e-prec_save): what the markets'
        precisions ensure (`engine.whole_assets`).  A stored value, which has that exponent,
        less or plus such an amount needs no truncation, and these two skip it."""
        self.assets = assets
        self.entries = {}        # (user_id, asset) -> (available, freeze)
        self.fees = {name: ZERO for name in assets}   # what fees took out, per asset
        self._exp = {name: exponent(a.prec_save) for name, a in assets.items()}
        # what a difference is truncated to in `trade` and `_move`: None for whole assets
        self._cut = {name: None if name in whole else exp for name, exp in self._exp.items()}
        # below this, a value at prec_save places has the context's digits at most: a sum
        # of such values is exact, and so needs no truncation in a whole asset
        self._room = {name: Decimal((0, (1,), CONTEXT.prec - a.prec_save))
                      for name, a in assets.items()}

    def get(self, user_id: int, kind: int, asset: str) -> Decimal:
        entry = self.entries.get((user_id, asset))
        value = None if entry is None else entry[kind - 1]
        return ZERO if value is None else value

    def available(self, user_id, asset):
        entry = self.entries.get((user_id, asset))
        return ZERO if entry is None or entry[0] is None else entry[0]

    def frozen(self, user_id, asset):
        entry = self.entries.get((user_id, asset))
        return ZERO if entry is None or entry[1] is None else entry[1]

    def total(self, user_id: int, asset: str) -> Decimal:
        """available + freeze, "0" when there is neither."""
        entry = self.entries.get((user_id, asset))
        return ZERO if entry is None else _total(entry[0], entry[1])

    def has(self, user_id, kind, asset):
        """Whether the entry exists (a value was stored and not brought back to zero)."""
        entry = self.entries.get((user_id, asset))
        return entry is not None and entry[kind - 1] is not None

    # Each change truncates the new value to the asset's prec_save and drops a side that
    # reaches zero (the entry too when both sides are gone): `_store`.  `trade` and `_move`,
    # which matching and replay run several times per order, write those steps out instead:
    # there a helper call costs more than the arithmetic.

    def _store(self, key, entry, index, value):
        value = value.quantize(self._exp[key[1]], ROUND_DOWN) or None
        entry = (value, entry[1]) if index == 0 else (entry[0], value)
        if entry[0] is None and entry[1] is None:
            self.entries.pop(key, None)
        else:
            self.entries[key] = entry

    def add(self, user_id, kind, asset, amount):
        """False, and nothing changed, when the sum does not fit the asset's prec_save
        places in the context's digits (it would be NaN)."""
        key = (user_id, asset)
        entry = self.entries.get(key)
        current = None if entry is None else entry[kind - 1]
        value = amount if current is None else current + amount
        if value.quantize(self._exp[asset], ROUND_DOWN).is_nan():
            return False
        self._store(key, _EMPTY if entry is None else entry, kind - 1, value)
        return True

    def sub(self, user_id, kind, asset, amount):
        key = (user_id, asset)
        entry = self.entries.get(key)
        current = None if entry is None else entry[kind - 1]
        if current is None or current < amount:
            return False
        self._store(key, entry, kind - 1, current - amount)
        return True

    def charge(self, user_id, asset, fee):
        """Take a trading fee from available funds, counting what actually left them."""
        key = (user_id, asset)
        entry = self.entries.get(key)
        current = None if entry is None else entry[0]
        if current is None or current < fee:
            return False
        self._store(key, entry, 0, current - fee)
        after = self.entries.get(key, _EMPTY)[0]
        self.fees[asset] += current if after is None else current - after
        return True

    def trade(self, user_id, kind, gives, given, gets, got, fee, totals=False):
        """One side of a fill at once: `sub(kind, gives, given)`, `add(AVAILABLE, gets,
        got)`, then `charge(gets, fee)` when there is a fee; as with those, a step that
        cannot be done (not enough funds) is skipped.

        With `totals`, returns the user's total of `gives` after the first step and of
        `gets` after the second and the third (None without a fee): what the history rows
        of the three movements show.
        """
        entries, cut = self.entries, self._cut
        key = (user_id, gives)
        entry = entries.get(key)
        index = kind - 1
        current = None if entry is None else entry[index]
        if current is not None and current >= given:
            exp = cut[gives]
            value = current - given if exp is None else (current - given).quantize(
                exp, ROUND_DOWN)
            entry = (value or None, entry[1]) if index == 0 else (entry[0], value or None)
            if entry[0] is None and entry[1] is None:
                del entries[key]
            else:
                entries[key] = entry
        if totals:
            given_total = ZERO if entry is None else _total(entry[0], entry[1])
        key = (user_id, gets)
        entry = entries.get(key)
        if entry is None:
            current = frozen = None
        else:
            current, frozen = entry
        exp = self._exp[gets]
        current = got if current is None else current + got
        # a stored value plus whole units is exact while it has room
        if current is got or cut[gets] is not None or current >= self._room[gets]:
            current = current.quantize(exp, ROUND_DOWN)
        if totals:
            got_total = _total(current or None, frozen)
        charged = fee > ZERO
        if charged and current >= fee:
            value = current - fee if cut[gets] is None else (current - fee).quantize(
                exp, ROUND_DOWN)
            self.fees[gets] += current - value
            current = value
        if current:
            entries[key] = (current, frozen)
        elif frozen is None:
            entries.pop(key, None)
        else:
            entries[key] = (None, frozen)
        if totals:
            return given_total, got_total, _total(current or None, frozen) if charged else None
        return None

    def freeze(self, user_id, asset, amount):
        """Move `amount` from available to freeze."""
        return self._move(user_id, asset, amount, 0, 1)

    def unfreeze(self, user_id, asset, amount):
        """Move `amount` from freeze back to available."""
        return self._move(user_id, asset, amount, 1, 0)

    def _move(self, user_id, asset, amount, source, target):
        key = (user_id, asset)
        entry = self.entries.get(key)
        if entry is None:
            return False
        current = entry[source]
        if current is None or current < amount:
            return False
        cut = self._cut[asset]
        left = current - amount if cut is None else (current - amount).quantize(cut,
                                                                                ROUND_DOWN)
        other = entry[target]
        moved = amount if other is None else other + amount
        if moved is amount or cut is not None or moved >= self._room[asset]:    # as in `trade`
            moved = moved.quantize(self._exp[asset], ROUND_DOWN)
        if not left and not moved:
            del self.entries[key]
        elif source == 0:
            self.entries[key] = (left or None, moved or None)
        else:
            self.entries[key] = (moved or None, left or None)
        return True

    def set(self, user_id, kind, asset, amount):
        """Store a value as it is (loading a slice); zero removes it."""
        key = (user_id, asset)
        self._store(key, self.entries.get(key, _EMPTY), kind - 1, amount)

    def iter_entries(self):
        """(user_id, asset, kind, value) for every stored value."""
        for (user_id, asset), entry in self.entries.items():
            for index in (0, 1):
                if entry[index] is not None:
                    yield user_id, asset, index + 1, entry[index]

    def summaries(self, assets):
        """{asset: (total, available_count, available_sum, freeze_count, freeze_sum)} over
        all users, in one pass over the entries."""
        acc = {name: [0, ZERO, 0, ZERO] for name in assets}
        for (user_id, name), (available, frozen) in self.entries.items():
            totals = acc.get(name)
            if totals is None:
                continue
            if available is not None:
                totals[0] += 1
                totals[1] += available
            if frozen is not None:
                totals[2] += 1
                totals[3] += frozen
        return {name: (a_sum + f_sum, a_count, a_sum, f_count, f_sum)
                for name, (a_count, a_sum, f_count, f_sum) in acc.items()}
