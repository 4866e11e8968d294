# -*- test-case-name: matchengine.test.test_balance -*-
"""Every user's available and frozen funds, per asset.

Each asset keeps its own entries (`AssetBalances`), keyed by user id; an entry is the tuple
(available, freeze), replaced at each change.  A missing entry or a missing side (None) is
zero; entries that drop to zero on both sides are removed.  Every stored value is truncated
to the asset's `prec_save` after each change and is never negative.  Operations that cannot
be done (not enough funds) return False and change nothing.

Matching holds the `AssetBalances` of its market's two assets and calls `trade`, `freeze`
and `unfreeze` with them: an entry is then found by its user id alone, with no key to build
and no lookup by asset name.  The other operations name the asset.

Tuples of decimals leave the garbage collector's reach after its first pass over them, so
entries made after start add nothing to later collections (as lists, always tracked, a
million of them made a full collection last about 0.2 s).
"""

from decimal import ROUND_DOWN, Decimal

try:
    import cython
except ImportError:         # run uncompiled, without Cython installed
    from utils import pure_cython as cython

from utils.decimals import CONTEXT, WIDE, ZERO, exponent

AVAILABLE, FREEZE = 1, 2

_EMPTY = (None, None)


def _total(available, frozen):
    """The sum of an entry's sides (None for a missing one).  The original sums from zero:
    a stored value is positive with the asset's prec_save exponent, so adding it to zero
    gives it back unchanged, digits and exponent, as returning it does."""
    if available is None:
        return ZERO if frozen is None else frozen
    return available if frozen is None else available + frozen


@cython.cclass
class AssetBalances:
    """One asset's entries (user id -> (available, freeze)) and what fees took out of it.

    `whole` says that every amount `trade` and `move` take or add is a whole number of the
    asset's smallest stored unit (1e-prec_save): what the markets' precisions ensure
    (`engine.whole_assets`).  A stored value, which has that exponent, less or plus such an
    amount needs no truncation, and these two skip it."""

    __slots__ = ("name", "entries", "fees", "exp", "cut", "room")

    def __init__(self, name, prec_save, whole):
        self.name = name
        self.entries = {}
        self.exp = exponent(prec_save)
        # a zero with the stored values' exponent, so that the sum has it whichever way a
        # fee is counted (see `Balances.trade`)
        self.fees = self.exp * ZERO
        # what a difference is truncated to in `trade` and `move`: None for a whole asset
        self.cut = None if whole else self.exp
        # below this, a value at prec_save places has the context's digits at most: a sum
        # of such values is exact, and so needs no truncation in a whole asset
        self.room = Decimal((0, (1,), CONTEXT.prec - prec_save))

    def move(self, user_id, amount, source, target):
        """Move `amount` between the sides of an entry (0 available, 1 freeze)."""
        entries = self.entries
        entry = entries.get(user_id)
        if entry is None:
            return False
        current = entry[source]
        if current is None or current < amount:
            return False
        cut = self.cut
        if cut is None and current >= self.room:    # as in `trade`
            cut = self.exp
        left = current - amount if cut is None else (current - amount).quantize(
            cut, ROUND_DOWN, WIDE)
        other = entry[target]
        moved = amount if other is None else other + amount
        if moved is amount or cut is not None or moved >= self.room:    # as in `trade`
            moved = moved.quantize(self.exp, ROUND_DOWN, WIDE)
        if not left and not moved:
            del entries[user_id]
        elif source == 0:
            entries[user_id] = (left or None, moved or None)
        else:
            entries[user_id] = (moved or None, left or None)
        return True


@cython.cclass
class Balances:

    __slots__ = ("assets", "by_asset")

    def __init__(self, assets, whole=()):
        """`whole` names the assets whose traded amounts are whole (see `AssetBalances`)."""
        self.assets = assets
        self.by_asset = {name: AssetBalances(name, a.prec_save, name in whole)
                         for name, a in assets.items()}

    @property
    def entries(self):
        """Every entry, keyed by (user_id, asset), in a new dict."""
        return {(user_id, name): entry for name, asset in self.by_asset.items()
                for user_id, entry in asset.entries.items()}

    @property
    def fees(self):
        """What fees took out of each asset, in a new dict."""
        return {name: asset.fees for name, asset in self.by_asset.items()}

    def count(self):
        """How many entries there are."""
        return sum(len(asset.entries) for asset in self.by_asset.values())

    def _entry(self, user_id, asset):
        balances = self.by_asset.get(asset)
        return None if balances is None else balances.entries.get(user_id)

    def get(self, user_id: int, kind: int, asset: str) -> Decimal:
        entry = self._entry(user_id, asset)
        value = None if entry is None else entry[kind - 1]
        return ZERO if value is None else value

    def available(self, user_id, asset):
        entry = self._entry(user_id, asset)
        return ZERO if entry is None or entry[0] is None else entry[0]

    def frozen(self, user_id, asset):
        entry = self._entry(user_id, asset)
        return ZERO if entry is None or entry[1] is None else entry[1]

    def total(self, user_id: int, asset: str) -> Decimal:
        """available + freeze, "0" when there is neither."""
        entry = self._entry(user_id, asset)
        return ZERO if entry is None else _total(entry[0], entry[1])

    def has(self, user_id, kind, asset):
        """Whether the entry exists (a value was stored and not brought back to zero)."""
        entry = self._entry(user_id, asset)
        return entry is not None and entry[kind - 1] is not None

    # Each change truncates the new value to the asset's prec_save and drops a side that
    # reaches zero (the entry too when both sides are gone): `_store`.  `trade` and `move`,
    # which matching and replay run several times per order, write those steps out instead:
    # there a helper call costs more than the arithmetic.

    def _store(self, balances, user_id, entry, index, value):
        value = value.quantize(balances.exp, ROUND_DOWN, WIDE) or None
        entry = (value, entry[1]) if index == 0 else (entry[0], value)
        if entry[0] is None and entry[1] is None:
            balances.entries.pop(user_id, None)
        else:
            balances.entries[user_id] = entry

    def add(self, user_id, kind, asset, amount):
        """False, and nothing changed, when the sum does not fit the asset's prec_save
        places in the context's digits: a deposit is refused there (a fill may still take a
        balance past them, see `trade`)."""
        balances = self.by_asset[asset]
        entry = balances.entries.get(user_id)
        current = None if entry is None else entry[kind - 1]
        value = amount if current is None else current + amount
        if value >= balances.room:      # at prec_save places: more than the context's digits
            return False
        self._store(balances, user_id, _EMPTY if entry is None else entry, kind - 1, value)
        return True

    def sub(self, user_id, kind, asset, amount):
        balances = self.by_asset.get(asset)
        if balances is None:        # an asset no longer configured holds nothing
            return False
        entry = balances.entries.get(user_id)
        current = None if entry is None else entry[kind - 1]
        if current is None or current < amount:
            return False
        self._store(balances, user_id, entry, kind - 1, current - amount)
        return True

    def charge(self, user_id, asset, fee):
        """Take a trading fee from available funds, counting what actually left them."""
        balances = self.by_asset.get(asset)
        if balances is None:
            return False
        entry = balances.entries.get(user_id)
        current = None if entry is None else entry[0]
        if current is None or current < fee:
            return False
        self._store(balances, user_id, entry, 0, current - fee)
        after = balances.entries.get(user_id, _EMPTY)[0]
        balances.fees += current if after is None else current - after
        return True

    def trade(self, user_id, kind, gives, given, gets, got, fee, totals=False):
        """One side of a fill at once, `gives` and `gets` being `AssetBalances`:
        `sub(kind, gives, given)`, `add(AVAILABLE, gets, got)`, then `charge(gets, fee)`
        when there is a fee; as with those, a step that cannot be done (not enough funds)
        is skipped.

        With `totals`, returns the user's total of `gives` after the first step and of
        `gets` after the second and the third (None without a fee): what the history rows
        of the three movements show.
        """
        entries = gives.entries
        entry = entries.get(user_id)
        index = kind - 1
        current = None if entry is None else entry[index]
        if current is not None and current >= given:
            exp = gives.cut
            if exp is None and current >= gives.room:
                exp = gives.exp     # past the context's digits: the difference is cut
            value = current - given if exp is None else (current - given).quantize(
                exp, ROUND_DOWN, WIDE)
            entry = (value or None, entry[1]) if index == 0 else (entry[0], value or None)
            if entry[0] is None and entry[1] is None:
                del entries[user_id]
            else:
                entries[user_id] = entry
        if totals:
            given_total = ZERO if entry is None else _total(entry[0], entry[1])
        entries = gets.entries
        entry = entries.get(user_id)
        if entry is None:
            current = frozen = None
        else:
            current, frozen = entry
        exp = gets.exp
        cut = gets.cut
        current = got if current is None else current + got
        # a stored value plus whole units is exact while it has room
        if current is got or cut is not None or current >= gets.room:
            current = current.quantize(exp, ROUND_DOWN, WIDE)
        if totals:
            got_total = _total(current or None, frozen)
        charged = bool(fee)     # never negative, as no rate is; a zero fee (even -0) is none
        if charged and current >= fee:
            if cut is None and current < gets.room:     # exact: the fee itself leaves
                gets.fees += fee
                current = current - fee
            else:
                value = (current - fee).quantize(exp, ROUND_DOWN, WIDE)
                gets.fees += current - value
                current = value
        if current:
            entries[user_id] = (current, frozen)
        elif frozen is None:
            entries.pop(user_id, None)
        else:
            entries[user_id] = (None, frozen)
        if totals:
            return given_total, got_total, _total(current or None, frozen) if charged else None
        return None

    def freeze(self, user_id, asset, amount):
        """Move `amount` from available to freeze."""
        balances = self.by_asset.get(asset)
        return balances is not None and balances.move(user_id, amount, 0, 1)

    def unfreeze(self, user_id, asset, amount):
        """Move `amount` from freeze back to available."""
        balances = self.by_asset.get(asset)
        return balances is not None and balances.move(user_id, amount, 1, 0)

    def set(self, user_id, kind, asset, amount):
        """Store a value as it is (loading a slice); zero removes it."""
        balances = self.by_asset[asset]
        self._store(balances, user_id, balances.entries.get(user_id, _EMPTY), kind - 1,
                    amount)

    def iter_entries(self):
        """(user_id, asset, kind, value) for every stored value."""
        for name, balances in self.by_asset.items():
            for user_id, entry in balances.entries.items():
                for index in (0, 1):
                    if entry[index] is not None:
                        yield user_id, name, index + 1, entry[index]

    def summaries(self, assets):
        """{asset: (total, available_count, available_sum, freeze_count, freeze_sum)} over
        all users, in one pass over each asset's entries."""
        out = {}
        for name in assets:
            a_count, a_sum, f_count, f_sum = 0, ZERO, 0, ZERO
            balances = self.by_asset.get(name)
            for available, frozen in () if balances is None else balances.entries.values():
                if available is not None:
                    a_count += 1
                    a_sum += available
                if frozen is not None:
                    f_count += 1
                    f_sum += frozen
            out[name] = (a_sum + f_sum, a_count, a_sum, f_count, f_sum)
        return out
