# -*- test-case-name: matchengine.test.test_engine -*-
"""What a state change leaves behind: history rows and Kafka messages, as plain data.

`Effects` collects, for the commands being executed, the rows the history writer inserts
into `trade_history` and the messages the producer sends, in the order the original
queues them.  The engine hands them over once the operation log holds the command, so that
nothing is announced that a crash could take back.

Rows are tuples in the column order of `HISTORY_COLUMNS`; decimals in the raw form, times as
the engine was given them (to the microsecond, as the operation log keeps them), exactly what
the original writes.

The texts write their integers (ids, sides, events: always exact ints) with "%s": compiled,
"%d" goes through the format protocol, about four times as slow.
"""

from utils.decimals import RATE_TEXTS, display_of, negated, raw_among, to_raw
from utils.jsonfmt import DIGITS, SCALAR_TEXTS, format_real, int_text, quote

SHARDS = 100
MAKER, TAKER = 1, 2      # a deal's roles, in the history rows

# the texts of users and fee rates, shared with the other modules rather than kept in every
# resting order
_texts = SCALAR_TEXTS
_fee_texts = RATE_TEXTS

BALANCE, ORDER, ORDER_DETAIL, DEAL, USER_DEAL = (
    "balance_history", "order_history", "order_detail", "deal_history", "user_deal_history")

HISTORY_COLUMNS = {
    BALANCE: ("time", "user_id", "asset", "business", "change", "balance", "detail"),
    ORDER: ("id", "create_time", "finish_time", "user_id", "market", "source", "t", "side",
            "price", "amount", "taker_fee", "maker_fee", "deal_stock", "deal_money",
            "deal_fee"),
    DEAL: ("time", "user_id", "deal_id", "order_id", "deal_order_id", "role", "price",
           "amount", "deal", "fee", "deal_fee"),
    USER_DEAL: ("time", "user_id", "market", "deal_id", "order_id", "deal_order_id", "side",
                "role", "price", "amount", "deal", "fee", "deal_fee"),
}
HISTORY_COLUMNS[ORDER_DETAIL] = HISTORY_COLUMNS[ORDER]

TOPIC_DEALS, TOPIC_ORDERS, TOPIC_BALANCES = "deals", "orders", "balances"


def _shard(number):
    """The shard (the table suffix) of the history rows of a user or an order."""
    return number % SHARDS


class Effects:
    """Collects history rows and messages; `take()` hands them over and starts afresh."""

    __slots__ = ("balances", "history", "messages", "_fill", "_amount_shown", "_price_shown",
                 "_event_order", "_event_text", "_latest", "_latest_id", "_before",
                 "_before_id")

    def __init__(self, balances):
        self.balances = balances
        self.history = []    # (table, shard, row)
        self.messages = []   # (topic, text)
        # the fill being recorded, from `deal`: its numbers and their raw texts (price,
        # amount, deal, ask fee, bid fee), which its orders' texts use too (an order's first
        # fill makes its sums these objects, see `Market.first_fill_kept`); then the
        # displayed amount and price its balance details share (both sides), None until made
        self._fill = None
        self._amount_shown = self._price_shown = None
        # the order of the latest order event, and its JSON text
        self._event_order, self._event_text = None, None
        # the last two orders whose ids were written, with their ids as texts
        self._latest, self._latest_id, self._before, self._before_id = None, "", None, ""

    def take(self):
        history, messages = self.history, self.messages
        self.history, self.messages = [], []
        self._event_order = self._event_text = None
        return history, messages

    def _id_text(self, order):
        """The order's id as text: a fill writes the ids of its taker and maker a few times
        (and a taker's in each of its fills)."""
        if self._latest is order:
            return self._latest_id
        text = self._before_id if self._before is order else int_text(order.id)
        self._before, self._before_id = self._latest, self._latest_id
        self._latest, self._latest_id = order, text
        return text

    def order_text(self, order):
        """The order's JSON text.  A command's last step on its order is the order's event,
        so the reply reuses that event's text instead of building it again."""
        return self._event_text if self._event_order is order else order.info_json()

    # -- balances ----------------------------------------------------------------------

    def balance_update(self, now, user_id, asset, business, change, detail_text):
        self.history.append((BALANCE, _shard(user_id), (
            now, user_id, asset, business, to_raw(change),
            to_raw(self.balances.total(user_id, asset)), detail_text)))
        self.messages.append((TOPIC_BALANCES, '[%s, %s, %s, %s, "%s"]' % (
            format_real(now), user_id, quote(asset), quote(business), to_raw(change))))

    def trade_balances(self, now, order, market, price, amount, gives, given, gets, got, fee,
                       fee_rate, totals):
        """The balance movements of one side of a fill: `given` of `gives` out, `got` of
        `gets` in (both `AssetBalances`), and the fee out of it when there is one; `totals`
        are the user's totals after each (`Balances.trade`).  Details as the original's
        (sorted keys).

        The fill's amount, deal and fees are the objects `deal` wrote just before: their raw
        texts are taken from there (a positive value negated is its text after a "-"), and
        its price and amount displayed once for both sides."""
        fill = self._fill
        if fill is None or fill[0] is not price or fill[2] is not amount:
            fill = self._fill = (price, to_raw(price), amount, to_raw(amount), None, None,
                                 None, None, None, None)
            self._amount_shown = None
        amount_text, market_text, price_text = (self._amount_shown, market.quoted_name,
                                                self._price_shown)
        if amount_text is None:
            amount_text = self._amount_shown = display_of(fill[3])
            price_text = self._price_shown = display_of(fill[1])
        user_id = order.user_id
        shard = _shard(user_id)
        detail = '{"a": "%s", "i": %s, "m": %s, "p": "%s"}' % (
            amount_text, self._id_text(order), market_text, price_text)
        history = self.history
        history.append((BALANCE, shard, (
            now, user_id, gives.name, "trade", negated(raw_among(fill, given)),
            to_raw(totals[0]), detail)))
        history.append((BALANCE, shard, (
            now, user_id, gets.name, "trade", raw_among(fill, got), to_raw(totals[1]),
            detail)))
        if totals[2] is not None:   # a fee was charged
            rate_text = _fee_texts.of(fee_rate)[2]
            detail = '{"a": "%s", "f": "%s", "i": %s, "m": %s, "p": "%s"}' % (
                amount_text, rate_text, self._id_text(order), market_text, price_text)
            history.append((BALANCE, shard, (
                now, user_id, gets.name, "trade", negated(raw_among(fill, fee)),
                to_raw(totals[2]), detail)))

    # -- orders and deals --------------------------------------------------------------

    def order_event(self, event, order, market):
        if order._head is None:
            # its first event: a taker, whose id the deals of its fills have written
            text = order.info_json(self._fill, self._id_text(order))
        else:
            text = order.info_json(self._fill)
        self._event_order, self._event_text = order, text
        event_text = DIGITS[event]
        self.messages.append((TOPIC_ORDERS, '{"event": %s, "order": %s, "stock": %s, '
                                            '"money": %s}' % (
                                                event_text, text, market.quoted_stock,
                                                market.quoted_money)))

    def order_finished(self, order):
        fill = self._fill
        row = (order.id, order.create_time, order.update_time, order.user_id,
               order.market, "(null)" if order.source is None else order.source, order.type,
               order.side, order.raw_price(), order.raw_amount(),
               _fee_texts.of(order.taker_fee)[1], _fee_texts.of(order.maker_fee)[1],
               raw_among(fill, order.deal_stock), raw_among(fill, order.deal_money),
               raw_among(fill, order.deal_fee))
        self.history.append((ORDER, _shard(order.user_id), row))
        self.history.append((ORDER_DETAIL, _shard(order.id), row))

    def deal(self, now, deal_id, market, ask, bid, price, amount, deal, ask_fee, bid_fee,
             taker_side):
        if taker_side == ask.side:
            ask_role, bid_role = TAKER, MAKER
        else:
            ask_role, bid_role = MAKER, TAKER
        # the fills of a taker down one level of the book share its price
        fill = self._fill
        price_raw = fill[1] if fill is not None and fill[0] is price else to_raw(price)
        amount_raw, deal_raw = to_raw(amount), to_raw(deal)
        ask_fee_raw, bid_fee_raw = to_raw(ask_fee), to_raw(bid_fee)
        self._fill = (price, price_raw, amount, amount_raw, deal, deal_raw, ask_fee,
                      ask_fee_raw, bid_fee, bid_fee_raw)
        self._amount_shown = None
        side_text = DIGITS[taker_side]
        history = self.history
        history.append((DEAL, _shard(ask.id), (
            now, ask.user_id, deal_id, ask.id, bid.id, ask_role, price_raw, amount_raw, deal_raw,
            ask_fee_raw, bid_fee_raw)))
        history.append((DEAL, _shard(bid.id), (
            now, bid.user_id, deal_id, bid.id, ask.id, bid_role, price_raw, amount_raw, deal_raw,
            bid_fee_raw, ask_fee_raw)))
        history.append((USER_DEAL, _shard(ask.user_id), (
            now, ask.user_id, market.name, deal_id, ask.id, bid.id, ask.side, ask_role,
            price_raw, amount_raw, deal_raw, ask_fee_raw, bid_fee_raw)))
        history.append((USER_DEAL, _shard(bid.user_id), (
            now, bid.user_id, market.name, deal_id, bid.id, ask.id, bid.side, bid_role,
            price_raw, amount_raw, deal_raw, bid_fee_raw, ask_fee_raw)))
        self.messages.append((TOPIC_DEALS, '[%s, %s, %s, %s, %s, %s, "%s", "%s", "%s", "%s", '
                                           '%s, %s, %s, %s]' % (
                                               format_real(now), market.quoted_name,
                                               self._id_text(ask), self._id_text(bid),
                                               _texts.of(ask.user_id),
                                               _texts.of(bid.user_id), price_raw,
                                               amount_raw, ask_fee_raw, bid_fee_raw,
                                               side_text, int_text(deal_id),
                                               market.quoted_stock, market.quoted_money)))
