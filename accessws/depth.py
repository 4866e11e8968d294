# -*- test-case-name: accessws.test.test_depth -*-
"""The depth diff pushed to depth subscribers, as the original computes it.

`diff(old, new, limit)` compares two `{"asks": [...], "bids": [...]}` books (levels
`[price, amount]`, best first) and returns an object with only the sides that changed: new or
changed levels as they are now, removed levels with amount "0".
"""

from decimal import Decimal

from utils.decimals import to_display

__all__ = ["diff"]


def _side(old, new, limit, ascending):
    out = []
    i = j = 0
    while i < len(old) and j < len(new):
        o_price, n_price = Decimal(old[i][0]), Decimal(new[j][0])
        if o_price == n_price:
            if Decimal(old[i][1]) != Decimal(new[j][1]):
                out.append(new[j])
            i += 1
            j += 1
        elif (n_price < o_price) == ascending:
            out.append(new[j])        # a new level ranks before the old one
            j += 1
        else:
            out.append([to_display(o_price), "0"])
            i += 1
    if len(new) < limit:
        out.extend([level[0], "0"] for level in old[i:])
    out.extend(new[j:])
    return out


def diff(old, new, limit):
    result = {}
    for side, ascending in (("asks", True), ("bids", False)):
        changes = _side(old.get(side, []), new.get(side, []), limit, ascending)
        if changes:
            result[side] = changes
    return result
