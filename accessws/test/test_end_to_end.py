# -*- test-case-name: accessws.test.test_end_to_end -*-
"""Every daemon as a real process (MariaDB, Kafka, Redis + sentinel) and a real websocket
client: the recorded websocket session, pushes after a trade included."""

import contextlib
import http.server
import json
import os
import threading
import time
import urllib.request

from twisted.trial.unittest import TestCase

from utils import testing

EXPECTED = testing.reference("ws-scenario.jsonl")
REDIS_DB = 6
TIME_KEYS = {"ctime", "mtime", "ftime", "time"}

# marketprice here counts a market's first deal from its own price, where the original
# opened the bucket at "0": these pushes differ from the recording exactly there
FIXED = {
    "kline.update": [["<time>", "8000", "8000", "8000", "8000", "0.3", "2400", "BTCBCH"]],
    "state.update": ["BTCBCH", {"close": "8000", "deal": "2400", "high": "8000",
                                "last": "8000", "low": "8000", "open": "8000",
                                "period": 86400, "volume": "0.3"}],
    "today.update": ["BTCBCH", {"deal": "2400", "high": "8000", "last": "8000",
                                "low": "8000", "open": "8000", "volume": "0.3"}],
}


def norm(x):
    if isinstance(x, dict):
        return {k: ("<time>" if k in TIME_KEYS and isinstance(v, (int, float)) else norm(v))
                for k, v in x.items()}
    if isinstance(x, list):
        return ["<time>" if isinstance(v, (int, float)) and not isinstance(v, bool)
                and 1e9 < v < 1e10 else norm(v) for v in x]
    return x


class AuthHandler(http.server.BaseHTTPRequestHandler):
    """The exchange's user service: good-token is user 21."""

    def do_GET(self):
        if self.headers.get("Authorization") == "good-token":
            body = {"code": 0, "message": None, "data": {"user_id": 21}}
        else:
            body = {"code": 11, "message": "invalid token", "data": None}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        """Requests are not logged: the test's output stays readable."""


class WebsocketScenarioTests(TestCase):

    timeout = 300

    def test_websocket_scenario(self):
        """Queries, auth, every subscription and the pushes of a trade, as recorded."""
        testing.clean_redis(self, REDIS_DB)
        auth = http.server.HTTPServer(("127.0.0.1", 0), AuthHandler)
        threading.Thread(target=auth.serve_forever, daemon=True).start()
        self.addCleanup(auth.shutdown)
        auth_url = "http://127.0.0.1:%d/auth" % auth.server_address[1]
        sentinel = testing.require("sentinel")
        broker, log_db, history_db = testing.exchange_stores(self, "e2e")
        workdir = os.path.abspath(self.mktemp())
        configs = testing.exchange_configs(
            broker, log_db, history_db,
            {"name": sentinel["name"], "addr": sentinel["addr"], "db": REDIS_DB}, auth_url)
        port = {name: p for name, _, p in configs}
        ws = port["accessws"]
        url = "http://127.0.0.1:%d/" % port["accesshttp"]
        daemons = [(testing.DaemonProcess(name, config, workdir), p)
                   for name, config, p in configs if name != "alertcenter"]
        for daemon, port in daemons:
            daemon.start()
            self.addCleanup(daemon.stop)
            daemon.wait_port(port)
        time.sleep(2.0)     # gateways connect; consumers reach the end of their topics

        def http_call(method, *params):
            body = json.dumps({"id": 1, "method": method, "params": list(params)}).encode()
            with urllib.request.urlopen(urllib.request.Request(url, data=body)) as r:
                return json.loads(r.read())

        http_call("balance.update", 21, "BCH", "deposit", 9001, "1000000", {})
        http_call("balance.update", 22, "BTC", "deposit", 9002, "100", {})
        http_call("balance.update", 23, "ZEC", "deposit", 9003, "10", {})
        http_call("balance.update", 24, "BCH", "deposit", 9004, "1000", {})
        http_call("order.put_limit", 23, "ZECBCH", 1, "1", "50", "0", "0", "warmup")
        http_call("order.put_limit", 24, "ZECBCH", 2, "1", "50", "0", "0", "warmup")
        time.sleep(1)
        client = testing.WSClient("127.0.0.1", ws)
        self.addCleanup(client.close)
        got = []
        counter = [0]

        def out(direction, frame):
            got.append({"dir": direction, "frame": frame})

        def req(method, *params):
            counter[0] += 1
            n = counter[0]
            frame = {"id": n, "method": method, "params": list(params)}
            client.send(json.dumps(frame))
            out("send", frame)
            pushes = []
            end = time.time() + 3
            while True:
                try:
                    r = json.loads(client.recv(max(0.05, end - time.time())))
                except TimeoutError:
                    out("note", "no reply to id %d within 3 s" % n)
                    break
                if r.get("id") == n:
                    out("recv", r)
                    break
                pushes.append(r)
            for p in sorted(pushes, key=lambda p: json.dumps(p, sort_keys=True)):
                out("recv", p)

        def drain(seconds):
            pushes = []
            end = time.time() + seconds
            while time.time() < end:
                with contextlib.suppress(TimeoutError):     # nothing came: keep waiting
                    pushes.append(json.loads(client.recv(0.2)))
            for p in sorted(pushes, key=lambda p: (p.get("method") or "",
                                                    json.dumps(p, sort_keys=True))):
                out("recv", p)

        now = int(time.time())
        req("server.ping")
        req("server.time")
        req("server.nope")
        req("kline.query", "BTCBCH", now - 600, now, 60)
        req("price.query", "BTCBCH")
        req("state.query", "BTCBCH", 86400)
        req("today.query", "BTCBCH")
        req("deals.query", "BTCBCH", 10, 0)
        req("depth.query", "BTCBCH", 10, "0")
        req("depth.query", "BTCBCH", 7, "0")
        req("order.query", "BTCBCH", 0, 10)
        req("server.auth", "bad-token", "web")
        req("server.auth", "good-token", "web")
        req("order.query", "BTCBCH", 0, 10)
        req("asset.query")
        req("asset.query", "BTC", "BCH")
        req("depth.subscribe", "BTCBCH", 10, "0")
        req("deals.subscribe", "BTCBCH")
        req("price.subscribe", "BTCBCH")
        req("state.subscribe", "BTCBCH")
        req("today.subscribe", "BTCBCH")
        req("kline.subscribe", "BTCBCH", 60)
        req("order.subscribe", "BTCBCH")
        req("asset.subscribe", "BTC", "BCH")
        drain(2)
        out("note", "trade: user 22 sells 0.5 at 8000, user 21 buys 0.3 at 8000")
        http_call("order.put_limit", 22, "BTCBCH", 1, "0.5", "8000", "0.002", "0.001", "ws")
        http_call("order.put_limit", 21, "BTCBCH", 2, "0.3", "8000", "0.002", "0.001", "ws")
        drain(8)
        req("order.query", "BTCBCH", 0, 10)
        req("order.history", "BTCBCH", 0, 0, 0, 10, 0)
        req("asset.history", "BCH", "", 0, 0, 0, 10)
        req("depth.unsubscribe")
        req("order.unsubscribe")

        with open(EXPECTED) as f:
            expected = [json.loads(line) for line in f]
        got = _without_repeated_klines(got)
        self.assertEqual(len(got), len(expected), "got:\n%s\nexpected:\n%s" % (
            _outline(got), _outline(expected)))
        traded = False
        for e, a in zip(expected, got):
            frame = e["frame"]
            traded = traded or (e["dir"] == "note" and "trade" in frame)
            if e["dir"] == "send":
                # the recording's time stamps are its own
                self.assertEqual(a["frame"]["method"], frame["method"])
                continue
            if isinstance(frame, dict) and frame.get("id") == 2:      # server.time: now
                self.assertIsInstance(a["frame"]["result"], int)
                continue
            if traded and isinstance(frame, dict) and frame.get("method") in FIXED:
                params = norm(a["frame"]["params"])
                if frame["method"] == "kline.update":
                    # a minute boundary crossed while draining adds the next, empty bucket
                    params = [k for k in params if k[5] != "0"]
                self.assertEqual(params, norm(FIXED[frame["method"]]), a)
                continue
            self.assertEqual(norm(a["frame"]), norm(frame))


def _traded_buckets(frame):
    return [k for k in norm(frame["params"]) if k[5] != "0"]


def _is_kline_push(item):
    return (item["dir"] == "recv" and isinstance(item["frame"], dict)
            and item["frame"].get("method") == "kline.update")


def _without_repeated_klines(frames):
    """The frames without a kline push that adds nothing traded to the one before it.

    accessws pushes a kline again when its newest bucket changes, and a minute boundary
    crossed while the test drains starts a new, empty one: a second push, whose traded
    buckets are the first one's (or none, once the trade's minute has left the polled range).
    """
    kept = []
    for item in frames:
        if (_is_kline_push(item) and kept and _is_kline_push(kept[-1])
                and _traded_buckets(item["frame"]) in (
                    [], _traded_buckets(kept[-1]["frame"]))):
            continue
        kept.append(item)
    return kept


def _outline(frames):
    """One line per frame: direction and method (or reply id), to see what differs."""
    lines = []
    for item in frames:
        frame = item["frame"]
        if isinstance(frame, dict):
            what = frame.get("method") or "reply %s" % frame.get("id")
        else:
            what = str(frame)
        lines.append("%s %s" % (item["dir"], what))
    return "\n".join(lines)
