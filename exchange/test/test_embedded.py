# -*- test-case-name: exchange.test.test_embedded -*-
"""The embedded exchange: its configs, its schema, and the real process traded through HTTP
and websocket, stopped cleanly, killed, and restarted with nothing moved."""

import io
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time

from twisted.application import service
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from exchange import embedded, tap
from exchange.test import system
from utils import daemon, testing

RUN_TWISTD = "from twisted.scripts.twistd import run; run()"


class ConfigTests(SynchronousTestCase):

    def test_ports_wired(self):
        """Moving a port moves every address that points at it."""
        data = embedded.configs({"matchengine": 17316, "accesshttp": 18080})
        self.assertEqual(data["matchengine"]["svr"]["bind"], ["tcp@127.0.0.1:17316"])
        for gateway in ("accesshttp", "accessws"):
            self.assertEqual(data[gateway]["matchengine"]["addr"], ["tcp@127.0.0.1:17316"])
            self.assertEqual(data[gateway]["readhistory"]["addr"], ["tcp@127.0.0.1:7424"])
        self.assertEqual(data["marketprice"]["accesshttp"], "http://127.0.0.1:18080/")
        self.assertNotIn("alert", data["matchengine"])

    def test_port_option(self):
        options = tap.Options()
        options.parseOptions(["--port", "accesshttp=9000", "--data", "x"])
        self.assertEqual(options["ports"], {"accesshttp": 9000})
        for bad in ("nope=1", "accesshttp", "accesshttp=x"):
            error = self.assertRaises(usage.UsageError, tap.Options().parseOptions,
                                      ["--port", bad])
            self.assertIn("NAME=PORT", str(error))

    def test_data_folder_locked(self):
        """One exchange at a time on a data folder: a second is refused, naming the folder
        (both would number operations from its last one), until the first lets go of it.
        A folder that cannot be made is refused in one line too, as a database that cannot
        be made there."""
        data = os.path.abspath(self.mktemp())
        lock = embedded.lock_data(data)
        error = self.assertRaises(embedded.DataUnusable, embedded.lock_data, data)
        self.assertEqual(str(error), "the data folder %s is in use by another exchange" % data)
        lock.close()
        embedded.lock_data(data).close()
        with open(os.path.join(data, "file"), "w") as f:
            f.write("a file where a folder is asked for")
        error = self.assertRaises(embedded.DataUnusable, embedded.lock_data,
                                  os.path.join(data, "file", "data"))
        self.assertEqual(str(error), "cannot use the data folder %s: Not a directory"
                         % os.path.join(data, "file", "data"))
        os.makedirs(os.path.join(data, "broken"))
        with open(os.path.join(data, "broken", "trade_log.db"), "w") as f:
            f.write("not a database, but long enough to be read as one" * 100)
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        # as under twistd, but for the exit status it sets for this whole process
        self.patch(tap, "exit_status_on_failure", lambda: None)
        options = tap.Options()
        options.parseOptions(["--data", os.path.join(data, "broken")])
        exit = self.assertRaises(SystemExit, tap.makeService, options)
        self.assertEqual(exit.code, 1)
        self.assertEqual(err.getvalue(), "exchange: not started: cannot make the databases in "
                         "%s: file is not a database\n" % os.path.join(data, "broken"))
        # refused, it let go of the folder
        embedded.lock_data(os.path.join(data, "broken")).close()
        # a store that is not the JSON it writes
        os.makedirs(os.path.join(data, "store"))
        with open(os.path.join(data, "store", "redis.json"), "w") as f:
            f.write('{"k:BTCBCH": ')
        err.truncate(0)
        err.seek(0)
        options = tap.Options()
        options.parseOptions(["--data", os.path.join(data, "store")])
        self.assertEqual(self.assertRaises(SystemExit, tap.makeService, options).code, 1)
        self.assertTrue(err.getvalue().startswith(
            "exchange: not started: cannot read the bus and store kept in %s: "
            % os.path.join(data, "store")), err.getvalue())
        embedded.lock_data(os.path.join(data, "store")).close()

    def test_schema(self):
        """The history shards are made, and making the schema again changes nothing."""
        path = self.mktemp()
        embedded.create_schema(path, ["trade_history", "trade_history_shards"])
        embedded.create_schema(path, ["trade_history", "trade_history_shards"])
        conn = sqlite3.connect(path)
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master "
                                                "WHERE type = 'table'")}
        conn.close()
        for table in embedded.HISTORY_TABLES:
            self.assertIn("%s_example" % table, names)
            for shard in range(100):
                self.assertIn("%s_%d" % (table, shard), names)


class Module(service.Service):
    """A module whose start returns `result`, telling `events` what it does."""

    def __init__(self, result, label="module", events=None):
        self.result, self.label, self.events = result, label, events

    def startService(self):
        service.Service.startService(self)
        if self.events is not None:
            self.events.append("start " + self.label)
        return self.result

    def stopService(self):
        service.Service.stopService(self)
        if self.events is not None:
            self.events.append("stop " + self.label)


class StartTests(SynchronousTestCase):
    """The banner waits for the modules to be ready, and is not shown when one gave up."""

    def setUp(self):
        self.patch(daemon, "_gave_up", [])

    def test_modules_started(self):
        """`started()` fires once every module's start (a Deferred, when it returns one)
        has finished."""
        replay = defer.Deferred()

        modules = embedded._Modules()
        for result in (replay, None, defer.succeed(None)):
            Module(result).setServiceParent(modules)
        modules.startService()
        started = modules.started()
        self.assertNoResult(started)
        replay.callback(None)
        self.successResultOf(started)

    def test_stages(self):
        """The modules of a stage start once every module of the stage before has finished
        starting; a stop before then stops only those started."""
        replay, listening = defer.Deferred(), defer.Deferred()
        events = []
        modules = embedded._Modules()
        engine, other = Module(replay, "engine", events), Module(None, "other", events)
        gateway, second = Module(None, "gateway", events), Module(None, "second", events)
        modules.add(gateway, 1)
        modules.add(engine, 0)
        modules.add(other, 0)
        modules.add(second, 2)
        modules.startService()
        started = modules.started()
        self.assertEqual(events, ["start engine", "start other"])
        replay.callback(None)
        self.assertEqual(events[2:], ["start gateway", "start second"])
        self.successResultOf(started)

        events[:] = []
        modules = embedded._Modules()
        engine, gateway = Module(listening, "engine", events), Module(None, "gateway", events)
        modules.add(engine, 0)
        modules.add(gateway, 1)
        modules.startService()
        started = modules.started()
        self.successResultOf(modules.stopService())
        listening.callback(None)
        self.successResultOf(started)
        self.assertEqual(events, ["start engine", "stop engine"])
        self.assertFalse(gateway.running)

    def test_start_that_raises(self):
        """A module whose start raises gives up (the failure logged as critical, the process
        stopping, status 1): the rest is not started, and `started()`, asked before the
        start or after, fires."""
        class Broken(Module):
            def startService(self):
                service.Service.startService(self)
                raise ValueError("orders.log: line 3 is not JSON")

        events = []
        reactor = MemoryReactorClock()
        modules = embedded._Modules(reactor)
        modules.add(Module(None, "engine", events), 0)
        modules.add(Broken(None), 0, name="broken module")
        modules.add(Module(None, "other", events), 0)
        modules.add(Module(None, "gateway", events), 1)
        before = modules.started()
        modules.startService()
        self.successResultOf(before)
        self.successResultOf(modules.started())
        self.assertEqual(events, ["start engine"])
        self.assertEqual(daemon.gave_up(), ["broken module could not start"])
        self.assertEqual(modules.name_of(Module(None)), "module")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        reactor.run()
        self.assertFalse(reactor.running)

    def test_no_stage_after_a_give_up(self):
        """Once a module has given up (the process is stopping), the next stages are not
        started: a gateway would answer for a moment in front of nothing."""
        replay = defer.Deferred()
        events = []
        modules = embedded._Modules()
        modules.add(Module(replay, "engine", events), 0)
        modules.add(Module(None, "gateway", events), 1)
        modules.startService()
        started = modules.started()
        daemon._gave_up.append("matchengine could not start")
        replay.callback(None)
        self.successResultOf(started)
        self.assertEqual(events, ["start engine"])

    def banner(self, ready):
        reactor = MemoryReactorClock()
        reactor.run()
        out = io.StringIO()
        banner = tap._Banner({"accesshttp": 8080, "accessws": 8090}, "data", lambda: ready,
                             reactor=reactor, out=out)
        banner.startService()
        return out

    def test_banner_once_ready(self):
        """While matchengine replays its log (every call would fail), nothing is shown; the
        addresses are, once the modules are ready."""
        ready = defer.Deferred()
        out = self.banner(ready)
        self.assertEqual(out.getvalue(), "")
        ready.callback(None)
        self.assertIn("HTTP JSON-RPC  http://127.0.0.1:8080/", out.getvalue())
        self.assertIn("Ctrl-C stops it.", out.getvalue())

    def test_no_banner_after_give_up(self):
        """A module that could not start (its port taken) stops the process: the banner,
        which would invite to use it, is not shown."""
        ready = defer.Deferred()
        out = self.banner(ready)
        daemon._gave_up.append("matchengine could not start")
        ready.callback(None)
        self.assertEqual(out.getvalue(), "")


class Exited(Exception):
    """The exchange's process ended while a test waited for it."""


def make_run(data):
    """The commands of the Makefile's `run` with DATA=`data`, on this interpreter: shell
    lines, the last one starting twistd."""
    venv = os.path.dirname(os.path.dirname(sys.executable))
    out = subprocess.run(["make", "-s", "-n", "-o", os.path.join(venv, ".compiled-stamp"),
                          "run", "VENV=" + venv, "DATA=" + data], cwd=testing.ROOT,
                         check=True, capture_output=True, text=True).stdout
    return [line for line in out.replace("\\\n", " ").splitlines() if line.strip()]


class Exchange:
    """`twistd -n exchange` as a real process on free ports; with `make`, started by the
    Makefile's `run` commands (and its pid file)."""

    def __init__(self, data, make=False):
        self.data = data
        self.make = make
        self.ports = {name: testing.free_port() for name in embedded.PORTS}
        self.proc = None

    def start(self):
        ports = []
        for name, port in self.ports.items():
            ports += ["--port", "%s=%d" % (name, port)]
        os.makedirs(self.data, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [testing.ROOT,
                                                          env.get("PYTHONPATH")]))
        self.out = open(os.path.join(self.data, "stdout"), "ab")
        if self.make:
            *before, twistd = make_run(self.data)
            for line in before:
                subprocess.run(line, shell=True, check=True, cwd=testing.ROOT, env=env,
                               stdout=self.out, stderr=subprocess.STDOUT)
            self.proc = subprocess.Popen("exec %s %s" % (twistd, " ".join(ports)), shell=True,
                                         cwd=testing.ROOT, stdout=self.out,
                                         stderr=subprocess.STDOUT, env=env)
        else:
            args = [sys.executable, "-c", RUN_TWISTD, "-n", "--pidfile=", "--logfile",
                    os.path.join(self.data, "twistd.log"), "exchange", "--data", self.data]
            self.proc = subprocess.Popen(args + ports, stdout=self.out,
                                         stderr=subprocess.STDOUT, env=env)
        http = system.HTTP(self.ports["accesshttp"])
        try:
            for name in ("accesshttp", "accessws"):
                if not testing.wait_until(lambda: self.alive() and testing.answers(
                        "127.0.0.1", self.ports[name]), 60):
                    raise AssertionError("%s did not come up" % name)
            # marketprice answers once it has its market list
            http.wait(lambda h: self.alive() and h.result("market.last", system.MARKET)
                      is not None, "marketprice ready")
        except (AssertionError, Exited) as e:
            raise AssertionError("embedded exchange (exit status %r): %s\n%s"
                                 % (self.proc.poll(), str(e) or "exited", self.output()))
        return http

    def alive(self):
        if self.proc.poll() is not None:
            raise Exited()
        return True

    def output(self):
        """What the process printed, and the warnings and errors it logged, for a failure's
        message."""
        self.out.flush()
        text = []
        with open(os.path.join(self.data, "stdout"), errors="replace") as f:
            text.append(f.read()[-2000:])
        try:
            with open(os.path.join(self.data, "log", "exchange.log"), errors="replace") as f:
                keep = False
                for line in f:
                    if line.startswith("["):
                        keep = not re.search(r"\] \[(info|debug|trace)\]", line)
                    if keep:
                        text.append(line.rstrip("\n"))
        except OSError as e:
            text.append("(no log: %s)" % e)
        return "\n".join(text)

    def logged(self, *words):
        """The lines of the exchange's log that hold one of `words`."""
        with open(os.path.join(self.data, "log", "exchange.log"), errors="replace") as f:
            return [line.rstrip("\n") for line in f if any(w in line for w in words)]

    def stop(self, sig=signal.SIGINT):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.out.close()
        return self.proc.returncode


class EmbeddedTests(SynchronousTestCase):

    def test_trade_stop_kill_restart(self):
        """Trades, pushes, k-lines and history survive a clean stop and a kill -9."""
        data = os.path.abspath(self.mktemp())
        exchange = Exchange(data)
        self.addCleanup(exchange.stop, signal.SIGKILL)
        since = int(time.time())
        http = exchange.start()
        with open(os.path.join(data, "stdout")) as f:
            out = f.read()
        self.assertIn("HTTP JSON-RPC  http://127.0.0.1:%d/" % exchange.ports["accesshttp"], out)
        # said before the state is loaded, which takes long with a large one
        self.assertIn("viabtc exchange (embedded): loading its state from %s; progress in %s"
                      % (data, os.path.join(data, "log", "exchange.log")), out)
        # the gateways start once the backends listen: no connection of theirs was refused
        self.assertEqual(exchange.logged("cannot connect", "not connected", "market.list"), [])
        sell, buy, pushes = system.trade(http, exchange.ports["accessws"])
        self.assertEqual(buy["deal_stock"], "0.4")
        self.assertTrue(pushes, "no deals.update push")
        self.assertEqual(pushes[-1][1][0]["amount"], "0.4")
        self.assertEqual(pushes[-1][1][0]["price"], "8000")
        http.wait(lambda h: system.settled(h, 1), "deal in marketprice and history")
        before = system.snapshot(http, since)
        self.assertEqual(before["last"], "8000.00000000")
        self.assertEqual(before["kline"][0][5:7], ["0.4", "3200"])
        self.assertEqual(before["balances"][0]["BTC"]["available"], "0.3992")

        # a clean stop (Ctrl-C) and a start: everything as it was
        # twistd stops the reactor, then exits by the same signal
        self.assertEqual(exchange.stop(signal.SIGINT), -signal.SIGINT)
        with open(os.path.join(data, "twistd.log")) as f:
            self.assertIn("Server Shut Down", f.read())
        http = exchange.start()
        self.assertEqual(system.snapshot(http, since), before)

        # more trading, then kill -9: what was acknowledged is there after the restart
        system.trade(http, exchange.ports["accessws"], start_id=11)
        http.wait(lambda h: system.settled(h, 2), "second deal settled")
        after = system.snapshot(http, since)
        self.assertNotEqual(after["balances"], before["balances"])
        exchange.stop(signal.SIGKILL)
        http = exchange.start()
        again = system.snapshot(http, since)
        self.assertEqual(again["balances"], after["balances"])
        self.assertEqual(again["pending"], after["pending"])
        self.assertEqual(again["depth"], after["depth"])
        # the idempotent deposits of the first round are still refused as repeats
        reply = http.call("balance.update", 1, "BCH", "deposit", 1, "100000", {})
        self.assertEqual(reply["error"], {"code": 10, "message": "repeat update"})

    def test_http_scenario(self):
        """All 69 calls of the original's recorded HTTP scenario get its answers from the
        embedded exchange (SQLite history included, amounts at the columns' places)."""
        from accesshttp.test.test_end_to_end import assert_scenario
        data = os.path.abspath(self.mktemp())
        exchange = Exchange(data)
        exchange.start()
        self.addCleanup(exchange.stop)
        assert_scenario(self, "http://127.0.0.1:%d/" % exchange.ports["accesshttp"], data)

    def test_port_in_use(self):
        """A port it cannot bind stops the whole exchange with status 1, saying why on the
        terminal, even when the failing listener is one nothing waits for, or matchengine's,
        opened only once its log is replayed; the banner is never shown."""
        for name in ("readhistory", "accesshttp_monitor", "matchengine"):
            exchange = Exchange(os.path.abspath(self.mktemp()))
            self.addCleanup(exchange.stop, signal.SIGKILL)
            busy = socket.socket()
            self.addCleanup(busy.close)
            busy.bind(("127.0.0.1", exchange.ports[name]))
            busy.listen()
            error = self.assertRaises(AssertionError, exchange.start)
            self.assertIn("exit status 1", str(error))
            with open(os.path.join(exchange.data, "stdout")) as f:
                out = f.read()
            self.assertRegex(out, r"could not (listen|start): Couldn't listen on "
                             r"127\.0\.0\.1:%d" % exchange.ports[name])
            # and no banner inviting to use what is not there
            self.assertNotIn("HTTP JSON-RPC", out)

    def test_stale_pid_file(self):
        """`make run` after a kill -9 whose pid another program has taken since: the pid
        file is removed, not taken for a running exchange, which twistd would refuse."""
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        other = subprocess.Popen(["sleep", "60"])
        self.addCleanup(other.wait)
        self.addCleanup(other.kill)
        path = os.path.join(data, "exchange.pid")
        with open(path, "w") as f:
            f.write("%d\n" % other.pid)
        exchange = Exchange(data, make=True)
        self.addCleanup(exchange.stop, signal.SIGKILL)
        exchange.start()
        with open(path) as f:
            self.assertEqual(int(f.read()), exchange.proc.pid)
        with open(os.path.join(data, "stdout")) as f:
            self.assertIn("removed the stale pid file %s (pid %d is no exchange)"
                          % (path, other.pid), f.read())

    def test_third_party_client(self):
        """A client written for the original (requests.post of JSON-RPC bodies) works."""
        import requests

        exchange = Exchange(os.path.abspath(self.mktemp()))
        self.addCleanup(exchange.stop, signal.SIGKILL)
        exchange.start()
        url = "http://127.0.0.1:%d/" % exchange.ports["accesshttp"]
        op_id = [0]

        def execute(method, params):
            return requests.post(url, json={"method": method, "params": params,
                                            "jsonrpc": "2.0", "id": 0},
                                 headers={"content-type": "application/json"}).json()

        def balance_update(user_id, asset, amount):
            op_id[0] += 1
            return execute("balance.update", [user_id, asset, "", op_id[0], str(amount), {}])

        def available(user_id, asset):
            reply = execute("balance.query", [user_id, asset])
            return float(reply["result"][asset]["available"])

        def put_limit(user_id, market, side, amount, price):
            return execute("order.put_limit", [user_id, market, side, str(amount), str(price),
                                               "0", "0", ""])

        market = execute("market.list", [])["result"][0]
        name, stock, money = market["name"], market["stock"], market["money"]
        before = available(1, money)
        self.assertEqual(balance_update(1, money, 0.1)["result"], {"status": "success"})
        self.assertEqual(available(1, money), before + 0.1)

        put_limit(1, name, 2, 0.1, 0.1)
        depth = execute("order.depth", [name, 10, "0"])["result"]
        self.assertIn(0.1, [float(b[0]) for b in depth["bids"]])
        volume = [float(b[1]) for b in depth["bids"] if float(b[0]) == 0.1][0]

        balance_update(2, stock, volume)
        put_limit(2, name, 1, volume, 0.1)
        # the depth right after the trade is the book's, never a stale cached answer
        depth = execute("order.depth", [name, 10, "0"])["result"]
        self.assertNotIn(0.1, [float(b[0]) for b in depth["bids"] + depth["asks"]])

        for user_id in (1, 2):
            for asset in (money, stock):
                current = available(user_id, asset)
                reply = balance_update(user_id, asset, -1 * current)
                self.assertIsNone(reply["error"], reply)
                self.assertEqual(available(user_id, asset), 0.0)

        # a request larger than the matchengine takes is refused alone; the next is answered
        reply = execute("balance.query", [1] + [money] * 3000)
        self.assertEqual(reply["error"], {"code": 1, "message": "invalid argument"})
        self.assertEqual(available(1, money), 0.0)
