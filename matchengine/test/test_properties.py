# -*- test-case-name: matchengine.test.test_properties -*-
"""Random operation sequences through the engine, with the money invariants after each step."""

from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from matchengine import config, engine
from matchengine.market import ASK, BID
from matchengine.test.test_balance import truncate_every_change
from utils import rpc
from utils.rpc import RPCError

USERS = [1, 2, 3, 4]
MARKETS = ["BTCBCH", "LTCBCH"]

amounts = st.decimals(min_value=Decimal("0.001"), max_value=Decimal("50"), places=3,
                      allow_nan=False, allow_infinity=False).map(str)
# a few common prices, so that orders often cross and meet at equal levels
prices = st.one_of(
    st.sampled_from(["7", "7.5", "8", "8.25", "9"]),
    st.decimals(min_value=Decimal("1"), max_value=Decimal("20"), places=2,
                allow_nan=False, allow_infinity=False).map(str))
fees = st.sampled_from(["0", "0.001", "0.002", "0.0035"])

limit_orders = st.tuples(st.just(201), st.sampled_from(USERS), st.sampled_from(MARKETS),
                         st.sampled_from([ASK, BID]), amounts, prices, fees, fees)
operations = st.one_of(
    st.tuples(st.just(102), st.sampled_from(USERS), st.sampled_from(["BTC", "LTC", "BCH"]),
              amounts, st.booleans()),
    limit_orders, limit_orders, limit_orders,
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


def state(eng):
    """Everything a replay must rebuild: balances, fees taken, counters and open orders."""
    orders = {name: {order_id: (order.user_id, order.side, order.price, order.left,
                                order.freeze, order.deal_stock, order.deal_money,
                                order.deal_fee)
                     for order_id, order in market.orders.items()}
              for name, market in eng.markets.items()}
    return (eng.balances.entries, eng.balances.fees, eng.order_id, eng.deal_id, orders)


def outcome(eng, command, params, now):
    """A command's result with its history rows and messages, or None when refused."""
    try:
        result = eng.execute(command, params, now)
    except RPCError:
        return None
    return rpc.reply_body(0, result, None, False), eng.effects.take()


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
                # each open order rests in the level its book keeps at its price
                self.assertIs(market.side_book(order.side).levels[order.price], order.level)
                self.assertIs(order.level.orders[order.id], order)
                self.assertEqual(order.level.price, order.price)
            for level in list(market.asks.values()) + list(market.bids.values()):
                self.assertEqual(level.amount, sum(o.left for o in level.orders.values()))
            for book, top in ((market.asks, market.top_ask), (market.bids, market.top_bid)):
                levels = list(book.values())
                self.assertEqual({level.price: level for level in levels}, book.levels)
                self.assertIs(top, levels[0] if levels else None)
                # best first: asks from the lowest price up, bids from the highest down
                prices = [level.price for level in levels]
                self.assertEqual(prices, sorted(prices, reverse=book is market.bids))
                self.assertEqual(len(set(prices)), len(prices))
            # the book is never crossed
            if market.asks and market.bids:
                self.assertLess(market.top_bid.price, market.top_ask.price)
        frozen = {key: entry[1] for key, entry in b.entries.items() if entry[1] is not None}
        self.assertEqual({k: v for k, v in held.items() if v}, frozen)
        # users' sums plus the fees taken change only by balance.update amounts
        sums = totals(eng)
        summaries = b.summaries(eng.assets)
        for asset in eng.assets:
            self.assertEqual(sums[asset] + b.fees[asset], deposited[asset], asset)
            # asset.summary's one pass agrees, counts included
            entries = [e for (user, a), e in b.entries.items() if a == asset]
            self.assertEqual(summaries[asset], (
                sums[asset], sum(e[0] is not None for e in entries),
                sum((e[0] for e in entries if e[0] is not None), Decimal(0)),
                sum(e[1] is not None for e in entries),
                sum((e[1] for e in entries if e[1] is not None), Decimal(0))))

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.booleans(), st.lists(operations, min_size=1, max_size=60))
    def test_invariants(self, funded, ops):
        """After every operation: no negatives, freeze = open orders, no crossed book,
        and each asset's total moves only by balance.update amounts.  An engine that
        truncates every balance change, whole assets or not, answers and records the same,
        to the digit and exponent.  At the end, a replay of the accepted operations rebuilds
        the same state.  Half the runs start with every user funded, so that most orders
        are accepted and many trade."""
        eng = engine.Engine(*config.example_tables())
        truncating = engine.Engine(*config.example_tables())
        truncate_every_change(truncating.balances)
        deposited = {name: Decimal(0) for name in eng.assets}
        log = []
        now = 0.0
        if funded:
            ops = [(102, user, asset, amount, False) for user in USERS
                   for asset, amount in (("BTC", "500"), ("LTC", "500"), ("BCH", "20000"))] + ops
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
            answer = outcome(eng, command, params, now)
            self.assertEqual(outcome(truncating, command, params, now), answer)
            if answer is not None:                   # a refused command changes nothing
                log.append((engine.Engine.log_entry(command, params), now))
                if command == 102:
                    deposited[op[2]] += Decimal(params[4])
            self.check(eng, deposited)
        self.assertEqual(repr(state(truncating)), repr(state(eng)))
        again = engine.Engine(*config.example_tables())
        for detail, t in log:
            again.replay(*engine.load_detail(detail), t)
        self.assertEqual(state(again), state(eng))


# parameters of every kind a JSON request can carry, biased toward the values that matter
json_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.sampled_from([0, 1, 2, 3, -1, 101, 102, (1 << 32), (1 << 63) - 1, -(1 << 63)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["", "0", "1", "-1", "0.001", "1e9", "1e-30", "NaN", "-Infinity", "sNaN",
                     "1" * 60, "BTC", "BCH", "BTCBCH", "LTCBCH", "deposit", "withdraw"]))
json_values = st.one_of(json_scalars, json_scalars, json_scalars, st.recursive(
    json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                          st.dictionaries(st.text(max_size=5), inner,
                                                          max_size=3)),
    max_leaves=6))


# a valid request of each command; the test changes some of its params
VALID = {101: [1, "BTC"], 102: [1, "BTC", "deposit", 99, "1.5", {}], 104: [], 105: [],
         201: [1, "BTCBCH", 1, "0.5", "8000", "0.002", "0.001", "s"],
         202: [2, "BTCBCH", 2, "100", "0.002", "s"], 203: [1, "BTCBCH", 0, 10],
         204: [1, "BTCBCH", 1], 205: ["BTCBCH", 1, 0, 10], 206: ["BTCBCH", 10, "0"],
         207: ["BTCBCH", 1], 307: [], 308: []}


@st.composite
def requests(draw):
    """A command with its valid params, some of them replaced, a few added or dropped."""
    command = draw(st.sampled_from(sorted(VALID)))
    params = [draw(json_values) if draw(st.integers(0, 2)) == 0 else value
              for value in VALID[command]]
    if draw(st.integers(0, 5)) == 0:
        params = params[:draw(st.integers(0, len(params)))]
    if draw(st.integers(0, 5)) == 0:
        params += draw(st.lists(json_values, min_size=1, max_size=2))
    return command, params


class AnyParamsTests(SynchronousTestCase):

    def test_every_command_covered(self):
        self.assertEqual(set(VALID), set(engine.Engine(*config.example_tables()).handlers))

    @settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
    @given(requests())
    def test_answered_or_refused(self, request):
        """Whatever a request carries, a command answers or refuses it with an RPC error
        (never an internal error), and a refusal changes nothing."""
        command, params = request
        eng = engine.Engine(*config.example_tables())
        for user in (1, 2):
            eng.execute(102, [user, "BTC", "deposit", user, "100", {}], 1.0)
            eng.execute(102, [user, "BCH", "deposit", user + 10, "100000", {}], 1.0)
        eng.execute(201, [1, "BTCBCH", ASK, "1", "8000", "0", "0", ""], 1.0)
        eng.execute(201, [2, "BTCBCH", BID, "1", "7000", "0", "0", ""], 1.0)
        eng.effects.take()
        before = repr(state(eng))
        try:
            result = eng.execute(command, params, 2.0)
        except RPCError as e:
            self.assertIn(e.code, (1, 10, 11, 12), (command, params))
            self.assertEqual(repr(state(eng)), before)
            self.assertEqual(eng.effects.take(), ([], []))
        else:
            rpc.reply_body(0, result, None, False)
