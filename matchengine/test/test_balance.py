# -*- test-case-name: matchengine.test.test_balance -*-
"""Balances: truncation to prec_save, removal at zero, refusals, and the one-call fill."""

import copy
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from matchengine import config
from matchengine.balance import AVAILABLE, FREEZE, Balances

ASSETS = config.example_tables()[0]     # BCH keeps 20 places, BTC 12


def new_balances():
    return Balances(ASSETS)


# Values with more places than either asset keeps, so truncation is exercised; zero is
# included so that sides and entries come and go.
values = st.one_of(
    st.just(Decimal(0)),
    st.decimals(min_value=Decimal("0"), max_value=Decimal("1000"), places=22,
                allow_nan=False, allow_infinity=False),
    st.sampled_from([Decimal("1"), Decimal("0.5"), Decimal("0.000000000001"),
                     Decimal("1E-20"), Decimal("1E-21")]))
stored = st.one_of(st.none(), values)


class BalanceTests(SynchronousTestCase):

    def test_add_truncates_to_prec_save(self):
        b = new_balances()
        b.add(1, AVAILABLE, "BTC", Decimal("1.1234567890129"))
        self.assertEqual(str(b.get(1, AVAILABLE, "BTC")), "1.123456789012")

    def test_sub_refused_changes_nothing(self):
        b = new_balances()
        b.add(1, AVAILABLE, "BTC", Decimal("1"))
        self.assertFalse(b.sub(1, AVAILABLE, "BTC", Decimal("1.000000000001")))
        self.assertFalse(b.sub(1, FREEZE, "BTC", Decimal("0")))
        self.assertFalse(b.sub(2, AVAILABLE, "BTC", Decimal("0")))
        self.assertEqual(b.entries, {(1, "BTC"): [Decimal("1.000000000000"), None]})

    def test_entry_removed_when_both_sides_reach_zero(self):
        b = new_balances()
        b.add(1, AVAILABLE, "BTC", Decimal("2"))
        self.assertTrue(b.freeze(1, "BTC", Decimal("2")))
        self.assertEqual(b.entries, {(1, "BTC"): [None, Decimal("2.000000000000")]})
        self.assertTrue(b.sub(1, FREEZE, "BTC", Decimal("2")))
        self.assertEqual(b.entries, {})

    def test_charge_counts_what_left(self):
        b = new_balances()
        b.add(1, AVAILABLE, "BTC", Decimal("1"))
        self.assertTrue(b.charge(1, "BTC", Decimal("0.0000000000015")))
        self.assertEqual(str(b.available(1, "BTC")), "0.999999999998")
        self.assertEqual(b.fees["BTC"], Decimal("0.000000000002"))
        self.assertFalse(b.charge(1, "BTC", Decimal("5")))
        self.assertTrue(b.charge(1, "BTC", Decimal("0.999999999998")))
        self.assertEqual((b.entries, b.fees["BTC"]), ({}, Decimal("1.000000000000")))

    @settings(max_examples=400, deadline=None)
    @given(kind=st.sampled_from([AVAILABLE, FREEZE]),
           gives=st.sampled_from(["BTC", "BCH"]),
           start=st.tuples(stored, stored, stored, stored),
           given_=values, got=values, fee=values)
    def test_trade_is_sub_add_charge(self, kind, gives, start, given_, got, fee):
        """`trade` leaves the same entries and fees as the three calls it stands for,
        including refused steps, zero amounts and sides that reach zero; asked for them, it
        returns the totals `total` gives after each call, to the digit and exponent."""
        gets = "BCH" if gives == "BTC" else "BTC"
        b = new_balances()
        for asset, (available, frozen) in ((gives, start[:2]), (gets, start[2:])):
            if available is not None:
                b.set(7, AVAILABLE, asset, available.quantize(b._exp[asset]))
            if frozen is not None:
                b.set(7, FREEZE, asset, frozen.quantize(b._exp[asset]))
        plain = copy.deepcopy(b)
        expected = copy.deepcopy(b)
        expected.sub(7, kind, gives, given_)
        totals = [expected.total(7, gives)]
        expected.add(7, AVAILABLE, gets, got)
        totals.append(expected.total(7, gets))
        if fee > 0:
            expected.charge(7, gets, fee)
            totals.append(expected.total(7, gets))
        else:
            totals.append(None)
        self.assertEqual([str(t) for t in b.trade(7, kind, gives, given_, gets, got, fee,
                                                  totals=True)],
                         [str(t) for t in totals])
        self.assertIsNone(plain.trade(7, kind, gives, given_, gets, got, fee))
        for done in (b, plain):
            self.assertEqual(done.entries, expected.entries)
            self.assertEqual(done.fees, expected.fees)
        for entry in b.entries.values():
            self.assertNotEqual(entry, [None, None])
