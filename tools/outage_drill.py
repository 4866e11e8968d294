#!/usr/bin/env python
"""Outage drill: the whole exchange under failing services, and the alerts it raises.

Every daemon runs as its own process (twistd), as in production: matchengine, readhistory,
accesshttp, marketprice, accessws and alertcenter, against the local MariaDB (through a proxy
the drill can cut), the test Redis (through its sentinel) and a Kafka broker of the drill's
own.  A light load runs throughout: orders, balance and history queries over HTTP, a
websocket client subscribed to depth and prices.  Then, one at a time, each for `--outage`
seconds with `--settle` seconds after it:

- `matchengine`: the matchengine frozen (SIGSTOP, then SIGCONT);
- `marketprice`: marketprice frozen;
- `kafka`: the broker stopped, then started again (without its data: the test broker keeps
  its topics in memory);
- `mysql`: every connection to MySQL cut, new ones refused;
- `blip`: the matchengine frozen for `--blip` seconds only.

With `--workers N` the gateways run N worker processes each, which share one log.

Each daemon's log over each scenario is read: its fatal lines (each an alert), its errors,
and its end lines ("working again", "the commit is done").  A table of them is printed.
What is expected: at most one alert from a daemon for one outage (the matchengine's two
databases are cut together: one each), none for the blip, and an end line from each daemon
that raised an alert.  The exit status is 1 when that does not hold.

Needs `depends/services.py up`; each scenario takes its `--outage` plus `--settle` seconds,
about a minute with the defaults.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from exchange.test import system  # noqa: E402
from utils import testing  # noqa: E402

SCENARIOS = ("matchengine", "marketprice", "kafka", "mysql", "blip")
DAEMONS = ("matchengine", "readhistory", "accesshttp", "marketprice", "accessws",
           "alertcenter")
LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\] \[\d+\] \[(\w+)\](.*)$")
ENDS = ("working again after", "the commit is done")
# the alerts a daemon may raise for one scenario, where more than one: the drill cuts the
# matchengine's two databases (db_log, db_history) together, and each tells its outage once
# (the log's stall, the history's writes)
ALLOWED = {("mysql", "matchengine"): 2}


def read_log(path):
    """The lines of a daemon's log file: (time, level, text), times as epoch seconds."""
    lines = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = LINE.match(line)
                if m:
                    when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
                    lines.append((when.timestamp(), m.group(2), m.group(3)))
    except FileNotFoundError:
        return []       # a daemon that never wrote its log
    return lines


def daemon_logs(workdir, name):
    """A daemon's log files: `<name>.log`, or one a day (alertcenter: `<name>.<date>.log`)."""
    folder = os.path.join(workdir, "log")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f == name + ".log" or re.fullmatch(re.escape(name) + r"\.\d{8}\.log", f)]


def judge(lines, start, end):
    """What a daemon said between `start` and `end`: its alerts (texts of fatal lines), its
    error lines, and whether an end line follows its last alert."""
    window = [(level, text) for when, level, text in lines if start <= when < end]
    alerts = [text for level, text in window if level == "fatal"]
    errors = [text for level, text in window if level == "error"]
    last_alert = max((i for i, (level, _) in enumerate(window) if level == "fatal"),
                     default=-1)
    ended = any(any(e in text for e in ENDS) for _, text in window[last_alert + 1:])
    return {"alerts": alerts, "errors": errors, "ended": ended or not alerts}


def verdict(scenario, results):
    """The faults of one scenario's results ({daemon: judge(...)}), as texts."""
    faults = []
    for daemon, r in results.items():
        if scenario == "blip" and r["alerts"]:
            faults.append("%s: an alert for a blip" % daemon)
        elif len(r["alerts"]) > ALLOWED.get((scenario, daemon), 1):
            faults.append("%s: %d alerts for one outage" % (daemon, len(r["alerts"])))
        if not r["ended"]:
            faults.append("%s: no end line after its alert" % daemon)
    return faults


def cell(r):
    if not r["alerts"] and not r["errors"]:
        return "-"
    return "%d alert%s, %d error%s%s" % (
        len(r["alerts"]), "" if len(r["alerts"]) == 1 else "s", len(r["errors"]),
        "" if len(r["errors"]) == 1 else "s", "" if r["ended"] else ", not ended")


class Load:
    """Orders and queries over HTTP, subscriptions over the websocket, until stopped."""

    def __init__(self, http_port, ws_port):
        self.http = system.HTTP(http_port)
        self.ws_port = ws_port
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.requests, daemon=True),
                        threading.Thread(target=self.pushes, daemon=True)]

    def start(self):
        self.http.result("balance.update", 1, "BCH", "deposit", 1, "1000000", {})
        self.http.result("balance.update", 2, "BTC", "deposit", 2, "1000", {})
        for thread in self.threads:
            thread.start()

    def stop(self):
        self.stopping.set()

    def requests(self):
        i = 0
        while not self.stopping.is_set():
            i += 1
            user = 1 + i % 2
            for method, params in (
                    ("order.put_limit", [user, system.MARKET, 3 - user, "0.01", "8000",
                                         "0.002", "0.001", "drill"]),
                    ("balance.query", [user]),
                    ("market.last", [system.MARKET]),
                    ("order.finished", [user, system.MARKET, 0, 0, 0, 10, 0])):
                try:
                    self.http.call(method, *params)
                except Exception:
                    pass     # failures are what the drill is about; the logs tell them
            self.stopping.wait(0.3)

    def pushes(self):
        while not self.stopping.is_set():
            try:
                client = testing.WSClient("127.0.0.1", self.ws_port)
                client.send(json.dumps({"id": 1, "method": "depth.subscribe",
                                        "params": [system.MARKET, 10, "0"]}))
                client.send(json.dumps({"id": 2, "method": "price.subscribe",
                                        "params": [system.MARKET]}))
                while not self.stopping.is_set():
                    try:
                        client.recv(1)
                    except TimeoutError:
                        continue     # no push this second: the loop checks the stop
            except Exception:
                self.stopping.wait(1)


def say(text):
    print("outage drill: %s" % text, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS),
                        help="what to break, in this order (default: all)")
    parser.add_argument("--outage", type=float, default=40.0,
                        help="seconds each outage lasts (default: 40)")
    parser.add_argument("--blip", type=float, default=5.0,
                        help="seconds the blip lasts (default: 5)")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds after each outage, before the next (default: 20)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes of each gateway (worker_num; default: 1)")
    parser.add_argument("--redis-db", type=int, default=13,
                        help="the test Redis database the drill empties and uses (default: 13)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the daemons' folder (configs, logs) and say where")
    args = parser.parse_args(argv)

    from twisted.internet import reactor, threads
    threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                     daemon=True).start()
    cleanups = []
    workdir = tempfile.mkdtemp(prefix="outage-drill-")
    try:
        testing.redis_command(args.redis_db, "FLUSHDB")
        cleanups.append(lambda: testing.redis_command(args.redis_db, "FLUSHDB"))
        sentinel = testing.require("sentinel")
        broker = testing.KafkaBroker().start()
        cleanups.append(broker.stop)
        log_db = testing.create_database("drilllog", ("trade_log",))
        cleanups.append(lambda: testing.drop_database(log_db))
        history_db = testing.create_database("drillhist", ("trade_history",), True)
        cleanups.append(lambda: testing.drop_database(history_db))
        proxy = testing.CuttableProxy(int(testing.require("mysql")["port"]))
        threads.blockingCallFromThread(reactor, proxy.up)
        configs = testing.exchange_configs(
            broker.address, log_db, history_db,
            {"name": sentinel["name"], "addr": sentinel["addr"], "db": args.redis_db})
        daemons = {}
        for name, config, port in configs:
            for key in ("db_log", "db_history"):
                if key in config:
                    config[key]["port"] = proxy.port
            if name in ("accesshttp", "accessws"):
                config["worker_num"] = args.workers
            daemon = testing.DaemonProcess(name, config, workdir).start()
            cleanups.append(daemon.stop)
            daemon.wait_port(port)
            daemons[name] = daemon
        port = {name: p for name, _, p in configs}
        http = system.HTTP(port["accesshttp"])
        http.wait(lambda h: h.result("market.last", system.MARKET) is not None,
                  "marketprice answers through accesshttp")
        say("every daemon up in %s; load started" % workdir)
        load = Load(port["accesshttp"], port["accessws"])
        load.start()
        cleanups.append(load.stop)
        time.sleep(5)

        def freeze(name, seconds):
            daemons[name].proc.send_signal(signal.SIGSTOP)
            try:
                time.sleep(seconds)
            finally:
                daemons[name].proc.send_signal(signal.SIGCONT)

        spans = []
        for scenario in args.scenarios:
            seconds = args.blip if scenario == "blip" else args.outage
            say("%s: %s s" % (scenario, "%g" % seconds))
            start = time.time()
            if scenario in ("matchengine", "marketprice"):
                freeze(scenario, seconds)
            elif scenario == "blip":
                freeze("matchengine", seconds)
            elif scenario == "kafka":
                broker.stop()
                time.sleep(seconds)
                broker.start()
            else:
                threads.blockingCallFromThread(reactor, proxy.down)
                time.sleep(seconds)
                threads.blockingCallFromThread(reactor, proxy.up)
            time.sleep(args.settle)
            spans.append((scenario, start, time.time()))
        load.stop()

        logs = {name: sorted(line for path in daemon_logs(workdir, name)
                             for line in read_log(path))
                for name in DAEMONS}
        faults = []
        width = max(len(s) for s in SCENARIOS)
        print("%-*s  %s" % (width, "scenario", "  ".join("%-18s" % d for d in DAEMONS)))
        for scenario, start, end in spans:
            results = {name: judge(lines, start, end) for name, lines in logs.items()}
            print("%-*s  %s" % (width, scenario,
                                "  ".join("%-18s" % cell(results[d]) for d in DAEMONS)))
            faults += ["%s: %s" % (scenario, f) for f in verdict(scenario, results)]
            for name in DAEMONS:
                for text in results[name]["alerts"]:
                    print("    %s alert: %s" % (name, text[:200]))
        for fault in faults:
            print("FAULT %s" % fault)
        say("%d fault%s" % (len(faults), "" if len(faults) == 1 else "s"))
        return 1 if faults else 0
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as e:
                say("cleanup: %s" % e)
        reactor.callFromThread(reactor.stop)
        if args.keep:
            say("configs and logs kept in %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
