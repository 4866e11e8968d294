# -*- test-case-name: utils.test.test_handoff -*-
"""Batches of plain data for another process of the same interpreter, in `marshal`'s format.

`dumps(batch)` gives what `marshal.loads` reads back as an equal value: the matchengine hands
each commit's history rows and messages to its writer process this way
(`matchengine.outbox`).  Uncompiled it is `marshal.dumps`.  Compiled (utils/handoff.pxd), the
lists, tuples, strings, ints, floats and None of such a batch are written by a C writer of
the same format (version 4): `marshal.dumps` looks every object that has another reference
up in a hash table, allocating an entry for each, so that a repeated one is written once;
the C writer keeps only the strings and tuples it met last, in a small table indexed by
address, and writes a repeat of one of them as a reference to it (the same strings come back
row after row: names, the texts of a fill's price and amount).  Anything else in the batch
(bools, big ints, other types, nesting deeper than `MAX_DEPTH`) is written by `marshal`
itself, without references, inside the same stream; what `marshal` refuses raises
ValueError here too.
"""

import marshal
import struct

try:
    import cython
except ImportError:         # run uncompiled, without Cython installed
    from utils import pure_cython as cython

__all__ = ["dumps", "dumps_framed", "FRAME"]

FRAME = struct.Struct(">I")     # a framed batch's length

MAX_DEPTH = 64      # containers nested deeper are handed to marshal itself (compiled)


def dumps(batch) -> bytes:
    """The marshal encoding of `batch`, for `marshal.loads`."""
    return _dumps(batch, MAX_DEPTH, 0) if cython.compiled else marshal.dumps(batch)


def dumps_framed(batch) -> bytes:
    """`dumps(batch)` after its length (4 bytes, big-endian), as a pipe carries batches
    (`matchengine.writer.read_batches`): compiled, written in one pass."""
    return _dumps(batch, MAX_DEPTH, 1) if cython.compiled else _framed(marshal.dumps(batch))


def _framed(body):
    return FRAME.pack(len(body)) + body
