# -*- test-case-name: marketprice.test.test_end_to_end -*-
"""matchengine, accesshttp and marketprice as real daemons, with Kafka and Redis + sentinel:
the recorded market scenario, with marketprice killed and restarted in the middle."""

import json
import os
import signal
import time
import urllib.request

from twisted.trial.unittest import TestCase

from matchengine.test.test_engine import norm
from utils import testing
from utils.kafka_queue import record_digest

EXPECTED = testing.reference("market-scenario.jsonl")
RECORDED_NOW = 1795561983      # the recording's `now`, from its kline requests
REDIS_DB = 7

# The two fixes of the original this project makes show exactly here: the first deal of a
# fresh topic is counted, and a market's first bucket opens at its first price.
FIXED = {
    24: "deal 1 (0.3 at 8000) is listed",
    27: {"close": "8010", "deal": "17392.2499932", "high": "8010", "last": "8010",
         "low": "7980", "open": "8000", "period": 86400, "volume": "2.17534332"},
    28: {"close": "8010", "deal": "17392.2499932", "high": "8010", "last": "8010",
         "low": "7980", "open": "8000", "period": 60, "volume": "2.17534332"},
    29: {"close": "60.5", "deal": "242", "high": "60.5", "last": "60.5", "low": "60.5",
         "open": "60.5", "period": 3600, "volume": "4"},
    30: {"deal": "17392.2499932", "high": "8010", "last": "8010", "low": "7980",
         "open": "8000", "volume": "2.17534332"},
}
KLINE = ["8000", "8010", "8010", "7980", "2.17534332", "17392.2499932", "BTCBCH"]
LTC_KLINE = ["60.5", "60.5", "60.5", "60.5", "4", "242", "LTCBCH"]


def post(url, method, params, request_id=1):
    body = json.dumps({"id": request_id, "method": method, "params": params}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
        return json.loads(r.read())


class MarketScenarioTests(TestCase):

    timeout = 300

    def test_market_scenario_with_restart(self):
        """marketprice answers what the deals imply, across a kill -9 and restart."""
        testing.clean_redis(self, REDIS_DB)
        sentinel = testing.require("sentinel")
        broker, log_db, history_db = testing.exchange_stores(self, "e2e")
        workdir = os.path.abspath(self.mktemp())
        me_port, mp_port, http_port = (testing.free_port() for _ in range(3))
        url = "http://127.0.0.1:%d/" % http_port
        me = testing.DaemonProcess("matchengine", testing.base_config(
            "matchengine", svr={"bind": ["tcp@127.0.0.1:%d" % me_port],
                                "max_pkg_size": 102400, "heartbeat_check": False},
            cli="tcp@127.0.0.1:%d" % testing.free_port(), db_log=testing.mysql_section(log_db),
            db_history=testing.mysql_section(history_db), brokers=broker), workdir)
        backend = {"max_pkg_size": 2000000}
        gw = testing.DaemonProcess("accesshttp", testing.base_config(
            "accesshttp", svr={"bind": ["tcp@127.0.0.1:%d" % http_port], "max_pkg_size": 102400},
            monitor={"bind": "tcp@127.0.0.1:%d" % testing.free_port(), "max_pkg_size": 1024},
            matchengine=dict(backend, name="matchengine", addr=["tcp@127.0.0.1:%d" % me_port]),
            readhistory=dict(backend, name="readhistory",
                             addr=["tcp@127.0.0.1:%d" % testing.free_port()]),
            marketprice=dict(backend, name="marketprice",
                             addr=["tcp@127.0.0.1:%d" % mp_port])), workdir)
        mp = testing.DaemonProcess("marketprice", testing.base_config(
            "marketprice", svr={"bind": ["tcp@127.0.0.1:%d" % mp_port], "max_pkg_size": 1000000,
                                "heartbeat_check": False},
            deals={"brokers": broker, "topic": "deals"},
            redis={"name": sentinel["name"], "addr": sentinel["addr"], "db": REDIS_DB},
            accesshttp=url, flush_interval=0.3), workdir)
        for daemon in (me, gw, mp):
            daemon.start()
            self.addCleanup(daemon.stop)
        me.wait_port(me_port)
        gw.wait_port(http_port)
        mp.wait_port(mp_port)
        testing.wait_until(lambda: False, 1.5)     # the gateway connects to its backends
        for params in ([21, "BCH", "deposit", 1, "1000000", {}],
                       [22, "BTC", "deposit", 2, "100", {}],
                       [21, "LTC", "deposit", 3, "1000", {}],
                       [22, "BCH", "deposit", 4, "100000", {}]):
            self.assertIsNone(post(url, "balance.update", params)["error"])
        # trade early in a minute, so that every deal lands in one minute bucket
        while time.time() % 60 > 40:
            time.sleep(0.5)
        with open(EXPECTED) as f:
            records = [json.loads(line) for line in f]
        trades = [r for r in records if r["request"]["method"].startswith("order.")]
        queries = [r for r in records if r["request"]["method"].startswith("market.")]
        for n, record in enumerate(trades):
            request = record["request"]
            if n in (4, 10):
                # kill marketprice: at once (deals consumed, perhaps not yet flushed), and
                # later once everything so far is flushed; it must neither lose nor recount
                if n == 10:
                    time.sleep(1.0)
                mp.stop(signal.SIGKILL)
                mp.start().wait_port(mp_port)
            got = post(url, request["method"], request["params"], request["id"])
            self.assertEqual(norm(got), norm(record["response"]), request)
        time.sleep(2.0)
        now = int(time.time())
        for record in queries:
            request = dict(record["request"])
            params = list(request["params"])
            if request["method"] == "market.kline":
                params[1:3] = [p - RECORDED_NOW + now for p in params[1:3]]
            got = post(url, request["method"], params, request["id"])
            expected = record["response"]
            rid = request["id"]
            if rid == 24:
                self.assertEqual(norm(got["result"][:-1]), norm(expected["result"]))
                self.assertEqual({k: v for k, v in got["result"][-1].items() if k != "time"},
                                 {"amount": "0.3", "id": 1, "price": "8000", "type": "buy"})
            elif rid in FIXED:
                self.assertEqual(got["result"], FIXED[rid], request)
            elif request["method"] == "market.kline" and expected["result"]:
                rows = got["result"]
                self.assertEqual(len(rows), 1, (request, rows))
                self.assertEqual(rows[0][1:], LTC_KLINE if params[0] == "LTCBCH" else KLINE)
            else:
                self.assertEqual(norm(got), norm(expected), request)
        # beside the offset of the last deal flushed, its digest, which the restarts checked
        offset = int(testing.redis_get(REDIS_DB, "k:offset"))
        self.assertEqual(testing.redis_get(REDIS_DB, "k:offset_digest"),
                         record_digest(testing.kafka_record(broker, "deals", offset)))
        self.assertEqual([line for line in mp.output() if "recreated" in line], [])
