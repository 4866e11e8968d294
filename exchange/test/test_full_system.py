# -*- test-case-name: exchange.test.test_full_system -*-
"""Every daemon as its own process against MariaDB, Redis with sentinel and the Kafka broker:
trade through HTTP, watch the websocket pushes, read k-lines and history, stop and restart
everything, and find nothing moved."""

import os
import time

from twisted.trial.unittest import SynchronousTestCase

from exchange.test import system
from utils import testing

REDIS_DB = 8


class FullSystemTests(SynchronousTestCase):

    def start_all(self, configs, workdir):
        daemons = []
        for name, config, port in configs:
            daemon = testing.DaemonProcess(name, config, workdir).start()
            self.addCleanup(daemon.stop)
            daemon.wait_port(port)
            daemons.append(daemon)
        http = system.HTTP(dict((n, p) for n, _, p in configs)["accesshttp"])
        http.wait(lambda h: h.result("market.last", system.MARKET) is not None,
                  "marketprice answers through accesshttp")
        return daemons

    def test_trade_restart_everything(self):
        sentinel = testing.require("sentinel")
        testing.clean_redis(self, REDIS_DB)
        broker, log_db, history_db = testing.exchange_stores(self, "sys")
        configs = testing.exchange_configs(
            broker, log_db, history_db,
            {"name": sentinel["name"], "addr": sentinel["addr"], "db": REDIS_DB})
        port = {name: p for name, _, p in configs}
        workdir = os.path.abspath(self.mktemp())
        since = int(time.time())

        daemons = self.start_all(configs, workdir)
        time.sleep(1.0)     # the websocket consumers reach the end of their topics
        http = system.HTTP(port["accesshttp"])
        sell, buy, pushes = system.trade(http, port["accessws"])
        self.assertEqual((sell["left"], buy["deal_stock"]), ("1", "0.4"))
        self.assertEqual([d["amount"] for p in pushes for d in p[1]][-1:], ["0.4"])
        http.wait(lambda h: system.settled(h, 1), "deal in marketprice and history")
        before = system.snapshot(http, since)
        self.assertEqual(before["last"], "8000.00000000")
        self.assertEqual(before["kline"][0][5:7], ["0.4", "3200"])
        self.assertEqual(before["balances"][0]["BTC"]["available"], "0.3992")
        self.assertEqual(before["balances"][1]["BCH"]["available"], "3196.8")
        self.assertEqual(len(before["finished"][0]["records"]), 1)

        # stop everything (SIGTERM: each flushes what it holds), start everything again
        for daemon in reversed(daemons):
            # a clean stop, asked for: exit status 0, as the original's
            self.assertEqual(daemon.stop(), 0, daemon.module)
        self.start_all(configs, workdir)
        http = system.HTTP(port["accesshttp"])
        self.assertEqual(system.snapshot(http, since), before)

        # and the restarted exchange trades on, its ids following the old ones
        _, buy2, _ = system.trade(http, port["accessws"], start_id=11)
        self.assertGreater(buy2["id"], buy["id"])
        http.wait(lambda h: system.settled(h, 2), "second deal settled")
        after = system.snapshot(http, since)
        self.assertEqual(after["kline"][0][5:7], ["0.8", "6400"])
        self.assertEqual(after["deals"][0]["id"], before["deals"][0]["id"] + 1)
