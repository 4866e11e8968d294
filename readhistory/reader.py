# -*- test-case-name: readhistory.test.test_server -*-
"""The history queries: parameters checked as the original checks them, SQL, result rows.

Each command is a `Query`: `parse(params)` validates and returns what the SQL needs (raising
`RPCError` as the original answers), `sql` builds the statement, `result(rows)` shapes the
answer.  No I/O here; `readhistory.server` runs the statements on the database pool.
"""

from decimal import Decimal

from utils.jsonfmt import loads
from utils.rpc import INVALID_ARGUMENT, signed32, signed64

U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF
QUERY_LIMIT = 101
SHARDS = 100

BALANCE_HISTORY, ORDER_FINISHED, ORDER_DEALS, ORDER_FINISHED_DETAIL, MARKET_USER_DEALS = (
    103, 208, 209, 210, 306)


def integer(value):
    """The original reads integer parameters leniently: anything not an integer is 0."""
    return value if type(value) is int else 0


def string(value):
    if type(value) is not str:
        raise INVALID_ARGUMENT()
    return value


def page(offset, limit):
    offset, limit = integer(offset) & U64, integer(limit) & U64
    if not 1 <= limit <= QUERY_LIMIT:
        raise INVALID_ARGUMENT()
    return offset, limit


def text(value):
    """A DECIMAL column as the original prints it: fixed point, trailing zeros removed."""
    if isinstance(value, Decimal):
        value = format(value, "f")
    else:
        value = str(value)
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def detail_object(value):
    """A balance change's `detail` as the original answers it: the JSON object the text
    holds, else an empty object.  The text is read as strictly as jansson reads it (no NaN,
    no real beyond a double, no integer beyond 64 bits, no NUL, no lone surrogate): such a
    detail is not an object the original knows of, and most of these could not be sent."""
    try:
        data = loads(value)
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _limit(offset, limit):
    return " LIMIT %d" % limit if offset == 0 else " LIMIT %d, %d" % (offset, limit)


def _times(column, start, end, where, args):
    if start:
        where.append("`%s` >= %%s" % column)
        args.append(start)
    if end:
        where.append("`%s` < %%s" % column)
        args.append(end)


def balance_history(params):
    if len(params) != 7:
        raise INVALID_ARGUMENT()
    user_id = integer(params[0]) & U32
    if not user_id:
        raise INVALID_ARGUMENT()
    asset, business = string(params[1]), string(params[2])
    start, end = integer(params[3]) & U64, integer(params[4]) & U64
    if end and start > end:
        raise INVALID_ARGUMENT()
    offset, limit = page(params[5], params[6])
    where, args = ["`user_id` = %s"], [user_id]
    if asset:
        where.append("`asset` = %s")
        args.append(asset)
    if business:
        where.append("`business` = %s")
        args.append(business)
    _times("time", start, end, where, args)
    sql = ("SELECT `time`, `asset`, `business`, `change`, `balance`, `detail` FROM "
           "`balance_history_%d` WHERE %s ORDER BY `id` DESC%s"
           % (user_id % SHARDS, " AND ".join(where), _limit(offset, limit)))

    def result(rows):
        return {"offset": signed64(offset), "limit": limit, "records": [
            {"time": float(t), "asset": a, "business": b, "change": text(c),
             "balance": text(bal), "detail": detail_object(d)}
            for t, a, b, c, bal, d in rows]}
    return sql, args, result


ORDER_COLUMNS = ("`id`, `create_time`, `finish_time`, `user_id`, `market`, `source`, `t`, "
                 "`side`, `price`, `amount`, `taker_fee`, `maker_fee`, `deal_stock`, "
                 "`deal_money`, `deal_fee`")


def order_record(row):
    (order_id, ctime, ftime, user_id, market, source, kind, side, price, amount, taker_fee,
     maker_fee, deal_stock, deal_money, deal_fee) = row
    return {"id": int(order_id), "ctime": float(ctime), "ftime": float(ftime),
            "user": int(user_id), "market": market, "source": source, "type": int(kind),
            "side": int(side), "price": text(price), "amount": text(amount),
            "taker_fee": text(taker_fee), "maker_fee": text(maker_fee),
            "deal_stock": text(deal_stock), "deal_money": text(deal_money),
            "deal_fee": text(deal_fee)}


def order_finished(params):
    if len(params) < 6:
        raise INVALID_ARGUMENT()
    user_id = integer(params[0]) & U32
    if not user_id:
        raise INVALID_ARGUMENT()
    market = string(params[1])
    start, end = integer(params[2]) & U64, integer(params[3]) & U64
    if end and start > end:
        raise INVALID_ARGUMENT()
    offset, limit = page(params[4], params[5])
    side = signed32(integer(params[6])) if len(params) > 6 else 0
    if side not in (0, 1, 2):
        raise INVALID_ARGUMENT()
    where, args = ["`user_id` = %s", "`market` = %s"], [user_id, market]
    if side:
        where.append("`side` = %s")
        args.append(side)
    _times("create_time", start, end, where, args)
    sql = ("SELECT %s FROM `order_history_%d` WHERE %s ORDER BY `id` DESC%s"
           % (ORDER_COLUMNS, user_id % SHARDS, " AND ".join(where), _limit(offset, limit)))

    def result(rows):
        return {"offset": signed64(offset), "limit": limit,
                "records": [order_record(r) for r in rows]}
    return sql, args, result


def order_deals(params):
    if len(params) != 3:
        raise INVALID_ARGUMENT()
    order_id = integer(params[0]) & U64
    if not order_id:
        raise INVALID_ARGUMENT()
    offset, limit = page(params[1], params[2])
    sql = ("SELECT `time`, `user_id`, `deal_id`, `role`, `price`, `amount`, `deal`, `fee`, "
           "`deal_order_id` FROM `deal_history_%d` WHERE `order_id` = %%s "
           "ORDER BY `id` DESC%s" % (order_id % SHARDS, _limit(offset, limit)))

    def result(rows):
        return {"offset": signed64(offset), "limit": limit, "records": [
            {"time": float(t), "user": int(u), "id": int(deal_id), "role": int(role),
             "price": text(price), "amount": text(amount), "deal": text(deal),
             "fee": text(fee), "deal_order_id": int(other)}
            for t, u, deal_id, role, price, amount, deal, fee, other in rows]}
    return sql, [order_id], result


def order_finished_detail(params):
    if len(params) != 1:
        raise INVALID_ARGUMENT()
    order_id = integer(params[0]) & U64
    if not order_id:
        raise INVALID_ARGUMENT()
    sql = ("SELECT %s FROM `order_detail_%d` WHERE `id` = %%s"
           % (ORDER_COLUMNS, order_id % SHARDS))

    def result(rows):
        return order_record(rows[0]) if rows else None
    return sql, [order_id], result


def market_user_deals(params):
    if len(params) != 4:
        raise INVALID_ARGUMENT()
    user_id = integer(params[0]) & U32
    if not user_id:
        raise INVALID_ARGUMENT()
    market = string(params[1])
    offset, limit = page(params[2], params[3])
    sql = ("SELECT `time`, `user_id`, `deal_id`, `side`, `role`, `price`, `amount`, `deal`, "
           "`fee`, `deal_order_id`, `market` FROM `user_deal_history_%d` "
           "WHERE `user_id` = %%s AND `market` = %%s ORDER BY `id` DESC%s"
           % (user_id % SHARDS, _limit(offset, limit)))

    def result(rows):
        return {"offset": signed64(offset), "limit": limit, "records": [
            {"time": float(t), "user": int(u), "id": int(deal_id), "side": int(side),
             "role": int(role), "price": text(price), "amount": text(amount),
             "deal": text(deal), "fee": text(fee), "deal_order_id": int(other), "market": m}
            for t, u, deal_id, side, role, price, amount, deal, fee, other, m in rows]}
    return sql, [user_id, market], result


QUERIES = {BALANCE_HISTORY: balance_history, ORDER_FINISHED: order_finished,
           ORDER_DEALS: order_deals, ORDER_FINISHED_DETAIL: order_finished_detail,
           MARKET_USER_DEALS: market_user_deals}
