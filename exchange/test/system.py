"""A trading scenario over the public interfaces (HTTP JSON-RPC and websocket), shared by the
embedded and the full-system tests: trade, watch the pushes, read k-lines and history, and
take a snapshot of everything a client can see, to compare across restarts."""

import json
import time
import urllib.request

from utils import testing

MARKET = "BTCBCH"


class HTTP:
    """JSON-RPC over HTTP as the original's clients speak it."""

    def __init__(self, port):
        self.url = "http://127.0.0.1:%d/" % port
        self.next_id = 0

    def call(self, method, *params):
        self.next_id += 1
        body = json.dumps({"id": self.next_id, "method": method, "params": list(params)})
        request = urllib.request.Request(self.url, data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            reply = json.loads(r.read())
        return reply

    def result(self, method, *params):
        reply = self.call(method, *params)
        if reply.get("error") is not None:
            raise AssertionError("%s%r answered %r" % (method, params, reply["error"]))
        return reply["result"]

    def wait(self, predicate, what, seconds=30):
        """Poll until predicate(self) is true (marketprice and history follow shortly)."""
        last = [None]

        def check():
            try:
                last[0] = predicate(self)
            except (AssertionError, OSError, KeyError, IndexError, TypeError) as e:
                last[0] = e
                return False
            return bool(last[0])
        if not testing.wait_until(check, seconds, 0.1):
            raise AssertionError("%s: not within %d s (last: %r)" % (what, seconds, last[0]))


def trade(http, ws_port, start_id=1):
    """Deposits, a resting sell and a crossing buy; returns what the websocket pushed.

    Business ids start at `start_id` so that a second round after a restart is new work.
    """
    client = testing.WSClient("127.0.0.1", ws_port)
    try:
        client.send(json.dumps({"id": 1, "method": "deals.subscribe", "params": [MARKET]}))
        pushes = []
        subscribed = False
        end = time.monotonic() + 10
        while not subscribed and time.monotonic() < end:
            frame = json.loads(client.recv(10))
            if frame.get("id") == 1:
                assert frame["result"] == {"status": "success"}, frame
                subscribed = True
        http.result("balance.update", 1, "BCH", "deposit", start_id, "100000", {})
        http.result("balance.update", 2, "BTC", "deposit", start_id + 1, "10", {})
        sell = http.result("order.put_limit", 2, MARKET, 1, "1", "8000", "0.002", "0.001",
                           "system")
        buy = http.result("order.put_limit", 1, MARKET, 2, "0.4", "8000", "0.002", "0.001",
                          "system")
        end = time.monotonic() + 15
        while time.monotonic() < end:
            try:
                frame = json.loads(client.recv(max(0.1, end - time.monotonic())))
            except TimeoutError:
                break
            if frame.get("method") == "deals.update":
                pushes.append(frame["params"])
                if any(d["amount"] == "0.4" for d in frame["params"][1]):
                    break
        return sell, buy, pushes
    finally:
        client.close()


def snapshot(http, since):
    """Everything a client sees of users 1 and 2 and the market, time stamps included."""
    now = int(time.time())
    return {
        "balances": [http.result("balance.query", user) for user in (1, 2)],
        "pending": [http.result("order.pending", user, MARKET, 0, 100) for user in (1, 2)],
        "depth": http.result("order.depth", MARKET, 10, "0"),
        "finished": [http.result("order.finished", user, MARKET, 0, 0, 0, 100, 0)
                     for user in (1, 2)],
        "balance_history": [http.result("balance.history", user, asset, "", 0, 0, 0, 100)
                            for user, asset in ((1, "BCH"), (1, "BTC"), (2, "BTC"))],
        "user_deals": [http.result("market.user_deals", user, MARKET, 0, 100)
                       for user in (1, 2)],
        "deals": http.result("market.deals", MARKET, 100, 0),
        "last": http.result("market.last", MARKET),
        "kline": http.result("market.kline", MARKET, since - 3600, now + 3600, 3600),
        "summary": http.result("asset.summary"),
    }


def settled(http, deals):
    """True once marketprice and the history show `deals` deals of MARKET."""
    return (len(http.result("market.deals", MARKET, 100, 0)) == deals
            and len(http.result("market.user_deals", 1, MARKET, 0, 100)["records"]) == deals
            and len(http.result("order.finished", 1, MARKET, 0, 0, 0, 100, 0)["records"])
            == deals)
