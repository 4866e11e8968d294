# -*- test-case-name: matchengine.test.test_balance -*-
"""Balances: truncation to prec_save, removal at zero, refusals, and the one-call fill."""

import copy
import gc
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from matchengine import config, engine
from matchengine.balance import AVAILABLE, FREEZE, Balances

ASSETS = config.example_tables()[0]     # BCH keeps 20 places, BTC 12


def new_balances():
    return Balances(ASSETS)


def truncate_every_change(balances):
    """Make `balances` truncate every change, as it does in an asset that is not whole."""
    for asset in balances.by_asset.values():
        asset.cut = asset.exp


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
        self.assertEqual(b.entries, {(1, "BTC"): (Decimal("1.000000000000"), None)})

    def test_unknown_asset_holds_nothing(self):
        """An asset that is not configured reads as zero and refuses every change that
        takes from it."""
        b = new_balances()
        self.assertEqual((b.get(1, AVAILABLE, "XYZ"), b.total(1, "XYZ"), b.has(1, FREEZE, "XYZ")),
                         (Decimal(0), Decimal(0), False))
        self.assertEqual([b.sub(1, AVAILABLE, "XYZ", Decimal(1)), b.charge(1, "XYZ", Decimal(1)),
                          b.freeze(1, "XYZ", Decimal(1)), b.unfreeze(1, "XYZ", Decimal(1))],
                         [False] * 4)
        self.assertEqual(b.entries, {})

    def test_entry_removed_when_both_sides_reach_zero(self):
        b = new_balances()
        b.add(1, AVAILABLE, "BTC", Decimal("2"))
        self.assertTrue(b.freeze(1, "BTC", Decimal("2")))
        self.assertEqual(b.entries, {(1, "BTC"): (None, Decimal("2.000000000000"))})
        self.assertTrue(b.sub(1, FREEZE, "BTC", Decimal("2")))
        self.assertEqual(b.entries, {})

    def test_entries_leave_the_collectors_reach(self):
        """After the collector's first pass over them, no entry is tracked: entries made
        after start never add to a later collection's work, however many there are."""
        b = new_balances()
        for user in range(1, 1001):
            b.add(user, AVAILABLE, "BTC", Decimal("2"))
            b.freeze(user, "BTC", Decimal("1"))
            b.trade(user, AVAILABLE, b.by_asset["BTC"], Decimal("0.5"), b.by_asset["BCH"],
                    Decimal("3"), Decimal("0.1"))
        gc.collect(0)
        self.assertEqual(len(b.entries), 2000)
        self.assertEqual([e for e in b.entries.values() if gc.is_tracked(e)], [])

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
                b.set(7, AVAILABLE, asset, available.quantize(b.by_asset[asset].exp))
            if frozen is not None:
                b.set(7, FREEZE, asset, frozen.quantize(b.by_asset[asset].exp))
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
        self.assertEqual([str(t) for t in b.trade(7, kind, b.by_asset[gives], given_,
                                                  b.by_asset[gets], got, fee, totals=True)],
                         [str(t) for t in totals])
        self.assertIsNone(plain.trade(7, kind, plain.by_asset[gives], given_,
                                      plain.by_asset[gets], got, fee))
        for done in (b, plain):
            self.assertEqual(done.entries, expected.entries)
            self.assertEqual(done.fees, expected.fees)
        for entry in b.entries.values():
            self.assertNotEqual(entry, (None, None))


def on_grid(places):
    """Amounts with at most `places` decimal places, zero included."""
    return st.decimals(min_value=Decimal("0"), max_value=Decimal("1000"), places=places,
                       allow_nan=False, allow_infinity=False)


class WholeAssetTests(SynchronousTestCase):
    """Assets whose traded amounts are whole in their smallest stored unit skip truncating
    what a fill or a freeze adds and takes: this must change no digit and no exponent."""

    def test_shipped_markets_trade_whole_amounts(self):
        assets, markets = config.example_tables()
        self.assertEqual(engine.whole_assets(assets, markets), set(assets))

    def test_precisions_that_allow_finer_amounts(self):
        assets, markets = config.example_tables()
        btcbch = markets["BTCBCH"]
        for market, whole in [
                (btcbch._replace(money_prec=9), {"BTC"}),      # price x amount x fee: 21
                (btcbch._replace(stock_prec=9), set()),        # 21 in BCH, 13 in BTC
                (btcbch._replace(fee_prec=5), set()),          # 21 in BCH, 13 in BTC
                (btcbch._replace(fee_prec=0), set()),          # 0: as written
                (btcbch._replace(stock_prec=3, money_prec=2, fee_prec=2), {"BCH", "BTC"})]:
            self.assertEqual(engine.whole_assets(assets, {"BTCBCH": market}) & {"BTC", "BCH"},
                             whole, market)
        small = dict(assets, BTC=assets["BTC"]._replace(prec_save=7))
        narrow = btcbch._replace(stock_prec=3, money_prec=2, fee_prec=2)
        # a freeze restored from a slice has 8 places
        self.assertEqual(engine.whole_assets(small, {"BTCBCH": narrow}) & {"BTC", "BCH"},
                         {"BCH"})

    def test_finest_fill_where_money_keeps_one_place_less(self):
        """price, amount and fee rate at their finest: the money fee has 20 places, one
        more than BCH keeps here, so BCH is truncated as before."""
        assets, markets = config.example_tables()
        assets = dict(assets, BCH=assets["BCH"]._replace(prec_save=19))
        self.assertEqual(engine.whole_assets(assets, markets), set(assets) - {"BCH"})
        eng = engine.Engine(assets, markets)
        truncating = engine.Engine(assets, markets)
        truncate_every_change(truncating.balances)
        for e in (eng, truncating):
            e.execute(102, [1, "BTC", "deposit", 1, "10", {}], 1.0)
            e.execute(102, [2, "BCH", "deposit", 1, "10", {}], 1.0)
            e.execute(201, [2, "BTCBCH", 2, "1.00000001", "1.00000001", "0.0001", "0.0001",
                            ""], 2.0)
            e.execute(201, [1, "BTCBCH", 1, "1.00000001", "1.00000001", "0.0009", "0.0001",
                            ""], 3.0)
        self.assertEqual(repr(eng.balances.entries), repr(truncating.balances.entries))
        self.assertEqual(repr(eng.balances.fees), repr(truncating.balances.fees))
        # 1.0000000200000001 received, less a fee of 0.00090000001800000009, to 19 places
        self.assertEqual(str(eng.balances.available(1, "BCH")), "0.9991000199820000999")

    @settings(max_examples=300, deadline=None)
    @given(kind=st.sampled_from([AVAILABLE, FREEZE]),
           gives=st.sampled_from(["BTC", "BCH"]),
           start=st.tuples(*[st.one_of(st.none(), on_grid(12))] * 4),
           given_=on_grid(12), got=on_grid(12), fee=on_grid(12), moved=on_grid(12))
    def test_whole_trade_and_move_are_the_truncating_ones(self, kind, gives, start, given_,
                                                          got, fee, moved):
        gets = "BCH" if gives == "BTC" else "BTC"
        whole, truncating = Balances(ASSETS, whole=set(ASSETS)), new_balances()
        for b in (whole, truncating):
            for asset, (available, frozen) in ((gives, start[:2]), (gets, start[2:])):
                if available is not None:
                    b.set(7, AVAILABLE, asset, available)
                if frozen is not None:
                    b.set(7, FREEZE, asset, frozen)
        self.assertEqual(*[repr(b.trade(7, kind, b.by_asset[gives], given_, b.by_asset[gets],
                                        got, fee, True))
                           for b in (whole, truncating)])
        self.assertEqual(*[(b.freeze(7, gets, moved), b.unfreeze(7, gives, moved))
                           for b in (whole, truncating)])
        self.assertEqual(repr(whole.entries), repr(truncating.entries))
        self.assertEqual(repr(whole.fees), repr(truncating.fees))
