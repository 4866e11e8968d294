# -*- test-case-name: accesshttp.test.test_openrpc -*-
"""The HTTP JSON-RPC API described as an OpenRPC document (answered by `rpc.discover`).

`CATALOGUE` lists every method with its positional parameters and its result, `DETAILS` and
`NOTES` what its answer and its errors need said beyond that, and `REQUESTS` and `COMMON`
what holds for every call; `document()` builds the OpenRPC 1.2 document from them, and
`markdown()` the English reference, with the calls of the original's recorded HTTP scenario
as examples.  From a checkout, `python -m accesshttp.openrpc --markdown > docs/http.md`
writes `docs/http.md` exactly (a test compares them): edit the text here, not there.
"""

import json
import os
import sys

# the original's answers recorded over HTTP (one {"request", "status", "response"} a line)
TRANSCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "depends", "reference", "http-scenario.jsonl")

INT = {"type": "integer"}
STR = {"type": "string"}
DEC = {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?$", "description": "decimal"}
SIDE = {"type": "integer", "enum": [1, 2], "description": "1 sell (ask), 2 buy (bid)"}
REAL = {"type": "number"}
OBJ = {"type": "object"}

ORDER = {"$ref": "#/components/schemas/Order"}
FINISHED = {"$ref": "#/components/schemas/FinishedOrder"}


def _p(name, schema, description, required=True):
    return {"name": name, "schema": schema, "description": description,
            "required": required}


def _page(key="records", item=OBJ):
    return {"type": "object", "properties": {"offset": INT, "limit": INT,
                                             key: {"type": "array", "items": item}}}


USER = _p("user_id", INT, "user id (unsigned 32-bit)")
MARKET = _p("market", STR, "market name, e.g. BTCBCH")
OFFSET = _p("offset", INT, "records to skip")
LIMIT = _p("limit", INT, "records to return, 1 to 101")
# the matchengine's lists take 0 too (an empty page with the total)
BOOK_LIMIT = _p("limit", INT, "records to return, 0 to 101")

# name -> (summary, params, result schema, errors beyond 1/2/3)
CATALOGUE = {
    "asset.list": ("The configured assets and the decimals shown for each.", [],
                   {"type": "array", "items": {"type": "object", "properties": {
                       "name": STR, "prec": INT}}}, []),
    "asset.summary": ("Totals over all users per asset; no params for every asset.",
                      [_p("asset", STR, "asset name (repeatable)", False)],
                      {"type": "array", "items": {"$ref": "#/components/schemas/AssetSummary"}},
                      []),
    "balance.query": ("A user's available and frozen balance per asset; no asset names for "
                      "every asset.", [USER, _p("asset", STR, "asset name (repeatable)", False)],
                      {"type": "object", "additionalProperties": {
                          "type": "object", "properties": {"available": DEC, "freeze": DEC}}},
                      []),
    "balance.update": ("Credit (positive change) or debit (negative) a user's available "
                       "balance; idempotent per user, asset, business and business id for a "
                       "day.", [USER, _p("asset", STR, "asset name"),
                                _p("business", STR, "kind of change, e.g. deposit (30 characters)"),
                                _p("business_id", INT, "id of the change within the business"),
                                _p("change", DEC, "signed amount"),
                                _p("detail", OBJ, "free object kept in the balance history")],
                       {"type": "object", "properties": {"status": STR}},
                       [(10, "repeat update"), (11, "balance not enough")]),
    "balance.history": ("A user's balance changes, newest first.",
                        [USER, _p("asset", STR, "asset name, \"\" for all"),
                         _p("business", STR, "business, \"\" for all"),
                         _p("start_time", INT, "from this unix time, 0 for no bound "
                            "(unsigned 64-bit, as every time and offset of the history calls: "
                            "-1 is after every time)"),
                         _p("end_time", INT, "before this unix time, 0 for no bound"),
                         _p("offset", INT, "records to skip (echoed signed, as given)"),
                         LIMIT],
                        _page(item={"$ref": "#/components/schemas/BalanceChange"}), []),
    "order.put_limit": ("Place a limit order; it trades against the book and rests with what "
                        "is left.", [USER, MARKET, _p("side", SIDE, "1 sell, 2 buy"),
                                     _p("amount", DEC, "stock amount"),
                                     _p("price", DEC, "price in money"),
                                     _p("taker_fee_rate", DEC, "fee rate when taking, < 1"),
                                     _p("maker_fee_rate", DEC, "fee rate when making, < 1"),
                                     _p("source", STR, "free text, 30 bytes")],
                        ORDER, [(10, "balance not enough"), (11, "amount too small")]),
    "order.put_market": ("Place a market order: it trades against the book now; what cannot "
                         "trade is dropped. A buy's amount is in money.",
                         [USER, MARKET, _p("side", SIDE, "1 sell, 2 buy"),
                          _p("amount", DEC, "stock to sell, or money to spend"),
                          _p("taker_fee_rate", DEC, "fee rate, < 1"),
                          _p("source", STR, "free text, 30 bytes")],
                         ORDER, [(10, "balance not enough"), (11, "amount too small"),
                                 (12, "no enough trader")]),
    "order.cancel": ("Cancel an open order; the answer is the order as it was.",
                     [USER, MARKET, _p("order_id", INT, "order id")], ORDER,
                     [(10, "order not found"), (11, "user not match")]),
    "order.book": ("Open orders of one side of a market in matching priority.",
                   [MARKET, _p("side", SIDE, "1 asks, 2 bids"), OFFSET, BOOK_LIMIT],
                   {"type": "object", "properties": {
                       "offset": INT, "limit": INT, "total": INT,
                       "orders": {"type": "array", "items": ORDER}}}, []),
    "order.depth": ("Price levels of a market, best first, merged by an interval (0 for "
                    "none).", [MARKET, _p("limit", INT, "levels per side, at most 101"),
                               _p("interval", DEC, "price step to merge levels, 0 for none")],
                    {"type": "object", "properties": {
                        "asks": {"type": "array", "items": {"type": "array", "items": DEC}},
                        "bids": {"type": "array", "items": {"type": "array", "items": DEC}}}},
                    []),
    "order.pending": ("A user's open orders in a market, newest first.",
                      [USER, MARKET, OFFSET, BOOK_LIMIT],
                      {"type": "object", "properties": {
                          "offset": INT, "limit": INT, "total": INT,
                          "records": {"type": "array", "items": ORDER}}}, []),
    "order.pending_detail": ("One open order, or null.",
                             [MARKET, _p("order_id", INT, "order id")],
                             {"oneOf": [ORDER, {"type": "null"}]}, []),
    "order.deals": ("The deals of one order, newest first.",
                    [_p("order_id", INT, "order id"), OFFSET, LIMIT],
                    _page(item={"$ref": "#/components/schemas/OrderDeal"}), []),
    "order.finished": ("A user's finished orders in a market, newest first.",
                       [USER, MARKET, _p("start_time", INT, "created from, 0 for no bound"),
                        _p("end_time", INT, "created before, 0 for no bound"), OFFSET, LIMIT,
                        _p("side", INT, "0 both, 1 sell, 2 buy", False)],
                       _page(item=FINISHED), []),
    "order.finished_detail": ("One finished order, or null.",
                              [_p("order_id", INT, "order id")],
                              {"oneOf": [FINISHED, {"type": "null"}]}, []),
    "market.last": ("The last deal price of a market.", [MARKET], DEC, []),
    "market.deals": ("The latest deals of a market, newest first, after a deal id.",
                     [MARKET, _p("limit", INT, "deals, 1 to 10000"),
                      _p("last_id", INT, "only deals with a larger id, 0 for the latest")],
                     {"type": "array", "items": {"$ref": "#/components/schemas/MarketDeal"}},
                     []),
    "market.kline": ("K-lines: [time, open, close, high, low, volume, deal, market] rows.",
                     [MARKET, _p("start", INT, "unix time"), _p("end", INT, "unix time"),
                      _p("interval", INT, "seconds per k-line")],
                     {"type": "array", "items": {"type": "array"}}, []),
    "market.status": ("Open, close, high, low, volume and deal over the last period seconds.",
                      [MARKET, _p("period", INT, "seconds, up to marketprice's sec_max "
                                                        "(604800, a week, by default)")],
                      {"$ref": "#/components/schemas/MarketStatus"}, []),
    "market.status_today": ("Open, last, high, low, volume and deal of the last 24 hours.",
                            [MARKET], {"$ref": "#/components/schemas/MarketToday"}, []),
    "market.user_deals": ("A user's deals in a market, newest first.",
                          [USER, MARKET, OFFSET, LIMIT],
                          _page(item={"$ref": "#/components/schemas/UserDeal"}), []),
    "market.list": ("The configured markets.", [],
                    {"type": "array", "items": {"type": "object", "properties": {
                        "name": STR, "stock": STR, "money": STR, "fee_prec": INT,
                        "stock_prec": INT, "money_prec": INT, "min_amount": DEC}}}, []),
    "market.summary": ("Open order counts and amounts per market; no params for every "
                       "market.", [_p("market", STR, "market name (repeatable)", False)],
                       {"type": "array", "items": {"type": "object", "properties": {
                           "name": STR, "ask_count": INT, "ask_amount": DEC,
                           "bid_count": INT, "bid_amount": DEC}}}, []),
}

_ORDER_FIELDS = {"id": INT, "market": STR, "source": STR, "type": INT, "side": SIDE,
                 "user": INT, "ctime": REAL, "mtime": REAL, "price": DEC, "amount": DEC,
                 "taker_fee": DEC, "maker_fee": DEC, "left": DEC, "deal_stock": DEC,
                 "deal_money": DEC, "deal_fee": DEC}
_FINISHED_FIELDS = {k: v for k, v in _ORDER_FIELDS.items() if k not in ("mtime", "left")}
_FINISHED_FIELDS["ftime"] = REAL

SCHEMAS = {
    "Order": {"type": "object", "properties": _ORDER_FIELDS},
    "FinishedOrder": {"type": "object", "properties": _FINISHED_FIELDS},
    "AssetSummary": {"type": "object", "properties": {
        "name": STR, "total_balance": DEC, "available_count": INT, "available_balance": DEC,
        "freeze_count": INT, "freeze_balance": DEC}},
    "BalanceChange": {"type": "object", "properties": {
        "time": REAL, "asset": STR, "business": STR, "change": DEC, "balance": DEC,
        "detail": OBJ}},
    "OrderDeal": {"type": "object", "properties": {
        "time": REAL, "user": INT, "id": INT, "role": INT, "price": DEC, "amount": DEC,
        "deal": DEC, "fee": DEC, "deal_order_id": INT}},
    "UserDeal": {"type": "object", "properties": {
        "time": REAL, "user": INT, "id": INT, "side": SIDE, "role": INT, "price": DEC,
        "amount": DEC, "deal": DEC, "fee": DEC, "deal_order_id": INT, "market": STR}},
    "MarketDeal": {"type": "object", "properties": {
        "id": INT, "time": REAL, "price": DEC, "amount": DEC, "type": STR}},
    "MarketStatus": {"type": "object", "properties": {
        "period": INT, "last": DEC, "open": DEC, "close": DEC, "high": DEC, "low": DEC,
        "volume": DEC, "deal": DEC}},
    "MarketToday": {"type": "object", "properties": {
        "open": DEC, "last": DEC, "high": DEC, "low": DEC, "volume": DEC, "deal": DEC}},
}

COMMON_ERRORS = [(1, "invalid argument"), (2, "internal error"), (3, "service unavailable")]

# what a method's answer needs said beyond its params and result
DETAILS = {
    "balance.history": "A record's `detail` is the object stored with the change; one that "
                       "is not a JSON object, or that the original's parser refuses (NaN, a "
                       "real beyond a double, an integer beyond 64 bits, a NUL or a lone "
                       "surrogate in a string), is answered as `{}`.",
}

# what a method's errors need said beyond their codes and messages
NOTES = {
    "balance.update": "1 `invalid argument` also for a credit whose sum the balance cannot "
                      "hold (34 digits at the asset's `prec_save` places)",
}

# how every call is answered, the HTTP statuses and the bodies refused included
REQUESTS = (
    "answers HTTP 200 with `{\"error\": null, \"result\": ..., \"id\": 1}`, or with "
    "`{\"error\": {\"code\": c, \"message\": m}, \"result\": null, \"id\": 1}` when the "
    "call is refused. Malformed requests (not POST, no body, not JSON, `id` not an integer, "
    "`method` not a string, `params` not an array, an integer beyond 64 bits, a real beyond a "
    "double, `NaN` or `Infinity` anywhere, a surrogate code point not paired, `\"\\u0000\"`, "
    "a body not in UTF-8 or with a byte order mark, nesting more than 100 deep) get an empty "
    "HTTP 400 and the connection is closed; an unknown method gets HTTP 404 with error 4 "
    "`method not found`; a backend that is not connected, HTTP 500 with an empty body; one "
    "that does not answer within `timeout`, HTTP 504 with error 5 `service timeout`; a "
    "reply that comes after its call's timeout is dropped, as the original drops it. A "
    "backend's failures are told on the log as an outage of that backend, not a line for each "
    "request, and one with its connection's failures: an error at the first, a fatal line, "
    "which alerts, once it has lasted 10 s, an error a minute while it lasts, and a warning "
    "when the backend answers again. "
    "Connections are kept alive; pipelined requests are answered in order.")

# what holds for every method
COMMON = (
    "Errors every method can answer: " + ", ".join("%d `%s`" % e for e in COMMON_ERRORS) +
    ". A call whose params are larger than its backend takes (the backend section's "
    "`max_request_size`, 10240 bytes by default) is answered 1 `invalid argument` by "
    "accesshttp itself. Amounts, prices and fee rates are decimal strings.")


def _errors_line(name, errors):
    """The markdown line of a method's own errors and their note; None without either."""
    note = NOTES.get(name)
    if not errors and not note:
        return None
    text = ", ".join("%d `%s`" % e for e in errors)
    return "Errors: %s." % "; ".join(filter(None, [text, note]))


def document():
    """The OpenRPC document of the API, as `rpc.discover` answers it."""
    methods = []
    for name, (summary, params, result, errors) in CATALOGUE.items():
        method = {
            "name": name, "summary": summary, "paramStructure": "by-position",
            "params": params, "result": {"name": "result", "schema": result},
            "errors": [{"code": c, "message": m} for c, m in COMMON_ERRORS + errors]}
        description = " ".join(filter(None, [
            DETAILS.get(name), NOTES.get(name) and "Errors: %s." % NOTES[name]]))
        if description:
            method["description"] = description
        methods.append(method)
    methods.append({"name": "rpc.discover", "summary": "This document.",
                    "paramStructure": "by-position", "params": [],
                    "result": {"name": "result", "schema": OBJ}})
    return {"openrpc": "1.2.6",
            "info": {"title": "ViaBTC exchange HTTP JSON-RPC", "version": "1.0.0",
                     "description": "POST {\"id\", \"method\", \"params\"}; accesshttp "
                                    + REQUESTS + " " + COMMON},
            "methods": methods, "components": {"schemas": SCHEMAS}}


def load_examples(path):
    """The calls recorded in the transcript at `path`, as {method: [(request, response)]}
    in their order."""
    examples = {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            request = record.get("request")
            if request:
                examples.setdefault(request["method"], []).append(
                    (request, record.get("response")))
    return examples


def markdown(examples=None):
    """The HTTP reference: every method, its params, result and errors, with up to two
    `examples` each ({method: [(request, response)]}, see `load_examples`)."""
    examples = examples or {}
    out = ["# HTTP JSON-RPC reference", "",
           "accesshttp answers `POST` requests whose body is a JSON-RPC call:", "",
           "```json", '{"id": 1, "method": "balance.query", "params": [1, "BTC"]}', "```", "",
           "and " + REQUESTS, "", COMMON, "",
           "`rpc.discover` answers this API as an OpenRPC document.", "",
           "The examples are the original's recorded answers, shown with their keys sorted; "
           "an answer comes with `error`, `result` and `id` in that order, and the keys of "
           "a result in the order the server writes them (docs/rpc.md, Bodies).", ""]
    for name, (summary, params, result, errors) in CATALOGUE.items():
        out += ["## `%s`" % name, "", summary, ""]
        if params:
            out += ["| # | param | type | meaning |", "|---|---|---|---|"]
            for i, p in enumerate(params):
                kind = p["schema"].get("description") or p["schema"].get("type")
                out.append("| %d | `%s` | %s | %s%s |" % (i, p["name"], kind, p["description"],
                                                         "" if p["required"] else " (optional)"))
            out.append("")
        else:
            out += ["No params.", ""]
        if name in DETAILS:
            out += [DETAILS[name], ""]
        line = _errors_line(name, errors)
        if line:
            out += [line, ""]
        for request, response in examples.get(name, [])[:2]:
            out += ["```json", json.dumps(request, ensure_ascii=False),
                    json.dumps(response, ensure_ascii=False), "```", ""]
    return "\n".join(out)


def main(argv=None):
    """`--markdown [TRANSCRIPT]`: the markdown reference, its examples from TRANSCRIPT (by
    default the recorded HTTP scenario of the checkout); else the OpenRPC document."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--markdown"]:
        path = argv[1] if len(argv) > 1 else TRANSCRIPT
        try:
            examples = load_examples(path)
        except OSError as e:
            sys.exit("cannot read the transcript of the examples: %s" % e)
        print(markdown(examples))
    else:
        print(json.dumps(document(), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
