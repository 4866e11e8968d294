# -*- test-case-name: matchengine.test.test_book -*-
"""One side of a market's order book: its price levels, kept sorted, best first.

A level holds the resting orders at one price, in arrival order (ascending id), and the sum
of what they have left.  A side finds a level by its price (`levels`) and keeps all of them
in matching priority: asks from the lowest price up, bids from the highest down.

The sorted order is held in chunks, each a list of at most `2 * LOAD` levels, stored from
the worst level to the best so that the best of all is the last of the last chunk.  Matching
takes and removes levels there, which costs no more than a list's `pop()`; a level placed
elsewhere is found by bisection, first among the chunks, then in one.  A chunk that grows
past `2 * LOAD` is split in two, one that shrinks under `LOAD // 2` is joined to its
neighbour, so no change moves more than a few thousand references whatever the book's depth.
"""

try:
    import cython
except ImportError:         # run uncompiled, without Cython installed
    from utils import pure_cython as cython

from utils.decimals import ZERO

LOAD = 256


@cython.cclass
class Level:
    __slots__ = ("price", "orders", "amount")

    def __init__(self, price):
        self.price = price
        self.orders = {}     # id -> Order, in arrival (= id) order
        self.amount = ZERO   # sum of the orders' left


@cython.cclass
class Book:
    """The levels of one side; `highest_first` for bids."""

    __slots__ = ("highest_first", "levels", "_chunks", "_lasts")

    def __init__(self, highest_first):
        self.highest_first = highest_first
        self.levels = {}     # price -> Level
        self._chunks = []    # lists of levels, worst first: the best level is the very last
        self._lasts = []     # the price of each chunk's last level

    def __len__(self):
        return len(self.levels)

    def best(self):
        """The best level, None when the side is empty."""
        chunks = self._chunks
        return chunks[-1][-1] if chunks else None

    def values(self):
        """The levels in matching priority, best first."""
        for chunk in reversed(self._chunks):
            yield from reversed(chunk)

    def after(self, level):
        """The level that follows `level` in matching priority, None after the last."""
        chunks = self._chunks
        index = self._chunk_of(level.price)
        chunk = chunks[index]
        position = self._index_in(chunk, level.price)
        if position:
            return chunk[position - 1]
        return chunks[index - 1][-1] if index else None

    def _before(self, price, other):
        """Whether `price` is stored before `other` (ranks below it)."""
        return price < other if self.highest_first else price > other

    def _chunk_of(self, price):
        """The index of the first chunk whose last price is not stored before `price`, the
        number of chunks when there is none."""
        lasts = self._lasts
        low, high = 0, len(lasts)
        while low < high:
            mid = (low + high) >> 1
            if self._before(lasts[mid], price):
                low = mid + 1
            else:
                high = mid
        return low

    def _index_in(self, chunk, price):
        """The index of the first level of `chunk` not stored before `price`."""
        low, high = 0, len(chunk)
        while low < high:
            mid = (low + high) >> 1
            level = chunk[mid]
            if self._before(level.price, price):
                low = mid + 1
            else:
                high = mid
        return low

    def add(self, level):
        """Put a new level (its price not yet in the side) in its place."""
        price = level.price
        self.levels[price] = level
        chunks = self._chunks
        if not chunks:
            chunks.append([level])
            self._lasts.append(price)
            return
        last = len(chunks) - 1
        if self._before(self._lasts[last], price):      # the new best, or the new last
            chunk = chunks[last]
            chunk.append(level)
            self._lasts[last] = price
            index = last
        else:
            index = self._chunk_of(price)
            chunk = chunks[index]
            chunk.insert(self._index_in(chunk, price), level)
        if len(chunk) > 2 * LOAD:
            self._split(index)

    def remove(self, level):
        """Take a level out of the side."""
        price = level.price
        del self.levels[price]
        chunks = self._chunks
        last = len(chunks) - 1
        chunk = chunks[last]
        if chunk[len(chunk) - 1] is level:          # the best: what matching removes
            index = last
            chunk.pop()
        else:
            index = self._chunk_of(price)
            chunk = chunks[index]
            del chunk[self._index_in(chunk, price)]
        if not chunk:
            del chunks[index]
            del self._lasts[index]
            return
        end = chunk[len(chunk) - 1]
        self._lasts[index] = end.price
        if len(chunk) < LOAD // 2 and len(chunks) > 1:
            self._join(index)

    def _split(self, index):
        chunk = self._chunks[index]
        half = len(chunk) >> 1
        level = chunk[half - 1]
        self._chunks.insert(index, chunk[:half])
        self._lasts.insert(index, level.price)
        del chunk[:half]

    def _join(self, index):
        """Join a small chunk to its neighbour (the one before it, the last one has no
        other), splitting the result again if it has grown too long."""
        if index == len(self._chunks) - 1:
            index -= 1
        chunk = self._chunks[index]
        chunk.extend(self._chunks[index + 1])
        del self._chunks[index + 1]
        del self._lasts[index]
        if len(chunk) > 2 * LOAD:
            self._split(index)
