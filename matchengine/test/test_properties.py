# -*- test-case-name: matchengine.test.test_properties -*-
"""Random operation sequences through the engine, with the money invariants after each step."""

import contextlib
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from matchengine import config, engine
from matchengine.market import ASK, BID
from utils.rpc import RPCError

USERS = [1, 2, 3, 4]
MARKETS = ["BTCBCH", "LTCBCH"]

amounts = st.decimals(min_value=Decimal("0.001"), max_value=Decimal("50"), places=3,
                      allow_nan=False, allow_infinity=False).map(str)
prices = st.decimals(min_value=Decimal("1"), max_value=Decimal("20"), places=2,
                     allow_nan=False, allow_infinity=False).map(str)
fees = st.sampled_from(["0", "0.001", "0.002", "0.0035"])

operations = st.one_of(
    st.tuples(st.just(102), st.sampled_from(USERS), st.sampled_from(["BTC", "LTC", "BCH"]),
              amounts, st.booleans()),
    st.tuples(st.just(201), st.sampled_from(USERS), st.sampled_from(MARKETS),
              st.sampled_from([ASK, BID]), amounts, prices, fees, fees),
    st.tuples(st.just(202), st.sampled_from(USERS), st.sampled_from(MARKETS),
              st.sampled_from([ASK, BID]), amounts, fees),
    st.tuples(st.just(204), st.sampled_from(USERS), st.sampled_from(MARKETS),
              st.integers(min_value=1, max_value=60)),
)


def totals(eng):
    sums = {name: Decimal(0) for name in eng.assets}
    for (user, asset), entry in eng.balances.entries.items():
        for value in entry:
            if value is not None:
                sums[asset] += value
    return sums


class InvariantTests(SynchronousTestCase):

    def check(self, eng, deposited):
        b = eng.balances
        # no negative balance, no stored zero
        for key, entry in b.entries.items():
            for value in entry:
                self.assertTrue(value is None or value > 0, (key, entry))
        # frozen funds are exactly what open orders hold
        held = {}
        for market in eng.markets.values():
            for order in market.orders.values():
                asset = market.stock if order.side == ASK else market.money
                key = (order.user_id, asset)
                held[key] = held.get(key, Decimal(0)) + order.freeze
                self.assertGreater(order.left, 0)
            # the book is never crossed
            if market.asks and market.bids:
                self.assertLess(market.bids.peekitem(0)[1].price,
                                market.asks.peekitem(0)[1].price)
        frozen = {key: entry[1] for key, entry in b.entries.items() if entry[1] is not None}
        self.assertEqual({k: v for k, v in held.items() if v}, frozen)
        # users' sums plus the fees taken change only by balance.update amounts
        sums = totals(eng)
        for asset in eng.assets:
            self.assertEqual(sums[asset] + b.fees[asset], deposited[asset], asset)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(operations, min_size=1, max_size=60))
    def test_invariants(self, ops):
        """After every operation: no negatives, freeze = open orders, no crossed book,
        and each asset's total moves only by balance.update amounts."""
        eng = engine.Engine(*config.example_tables())
        deposited = {name: Decimal(0) for name in eng.assets}
        now = 0.0
        for n, op in enumerate(ops):
            now += 1
            command = op[0]
            if command == 102:
                _, user, asset, amount, withdraw = op
                change = "-" + amount if withdraw else amount
                params = [user, asset, "deposit", n, change, {}]
            else:
                params = list(op[1:])
                if command == 201:
                    params.append("p")
                elif command == 202:
                    params.append("m")
            with contextlib.suppress(RPCError):      # a refused command changes nothing
                eng.execute(command, params, now)
                if command == 102:
                    deposited[op[2]] += Decimal(params[4])
            self.check(eng, deposited)
