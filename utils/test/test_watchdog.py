# -*- test-case-name: utils.test.test_watchdog -*-
"""The watchdog and the deployment folders: every daemon started by its bin/ script, killed
with SIGKILL and back within a second, check_alive.sh and restart.sh as cron uses them."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from utils import testing, watchdog

REDIS_DB = 10


class OptionsTests(SynchronousTestCase):

    def test_worker_command(self):
        """The child is a foreground twistd with its own pid and log files."""
        options = watchdog.Options()
        options.parseOptions(["--worker-pidfile", "log/x.worker.pid", "--worker-logfile",
                              "log/twistd.log", "matchengine", "--config", "c.json"])
        cmd = watchdog.worker_command(options["module"], options["args"],
                                      options["worker-pidfile"], options["worker-logfile"])
        self.assertEqual(cmd[0], sys.executable)
        self.assertEqual(cmd[3:], ["-n", "--pidfile", "log/x.worker.pid", "--logfile",
                                   "log/twistd.log", "matchengine", "--config", "c.json"])

    def test_monitor_delays(self):
        """A crash-looping worker waits at most a second between starts."""
        options = watchdog.Options()
        options.parseOptions(["alertcenter"])
        monitor = watchdog.make_monitor(options)
        self.assertLessEqual(monitor.maxRestartDelay, 1.0)
        self.assertEqual(monitor.killTime, 60.0)
        self.assertIn("alertcenter", monitor.processes)

    def test_check_messages(self):
        """check says why a daemon is down."""
        home = self.mktemp()
        os.makedirs(os.path.join(home, "log"))
        ok, message = watchdog.check(home, "readhistory")
        self.assertFalse(ok)
        self.assertIn("no pid file", message)
        with open(os.path.join(home, "log", "readhistory.pid"), "w") as f:
            f.write("999999999")
        ok, message = watchdog.check(home, "readhistory")
        self.assertFalse(ok)
        self.assertIn("watchdog pid 999999999 is not running", message)
        with open(os.path.join(home, "log", "readhistory.pid"), "w") as f:
            f.write(str(os.getpid()))
        ok, message = watchdog.check(home, "readhistory")
        self.assertFalse(ok)
        self.assertIn("pid %d of %s is not its watchdog: a stale pid file" % (
            os.getpid(), os.path.join(home, "log", "readhistory.pid")), message)
        fake = self.fake_process(home, "readhistory.pid", "twistd", "watchdog", "readhistory")
        ok, message = watchdog.check(home, "readhistory")
        self.assertFalse(ok)
        self.assertIn("watchdog pid %d runs, its worker does not" % fake.pid, message)
        # a worker that has not said it is ready is starting: up, whatever its port does
        worker = self.fake_process(home, "readhistory.worker.pid", "twistd", "readhistory")
        os.makedirs(os.path.join(home, "conf"))
        with open(os.path.join(home, "conf", "config.json"), "w") as f:
            json.dump({"svr": {"bind": ["tcp@127.0.0.1:%d" % testing.free_port()]}}, f)
        ok, message = watchdog.check(home, "readhistory")
        self.assertTrue(ok)
        self.assertIn("readhistory: up, starting (watchdog pid %d, worker pid %d loading its "
                      "state" % (fake.pid, worker.pid), message)
        # once ready, a port that does not answer is down
        with open(os.path.join(home, "log", "readhistory.ready"), "w") as f:
            f.write("%d\n" % worker.pid)
        ok, message = watchdog.check(home, "readhistory")
        self.assertFalse(ok)
        self.assertIn("worker pid %d runs but 127.0.0.1:" % worker.pid, message)

    def test_probe_needs_an_answer(self):
        """A port whose daemon does not answer is down, though the kernel took the
        connection: a frozen reactor; one that answers is up."""
        import socket
        import threading
        frozen = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(frozen.close)
        probe = watchdog._probe("matchengine")
        with self.assertRaises(OSError):
            watchdog._answers(*frozen.getsockname(), probe, timeout=0.2)
        watchdog._answers(*frozen.getsockname(), None, timeout=0.2)     # alertcenter's

        answering = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(answering.close)

        def answer():
            conn, _ = answering.accept()
            with conn:
                conn.recv(100)
                conn.sendall(b"x")
        thread = threading.Thread(target=answer)
        thread.start()
        self.addCleanup(thread.join)
        watchdog._answers(*answering.getsockname(), probe, timeout=5)

    def test_ready_file(self):
        """The watchdog names the ready file in its worker's environment; the worker writes
        its pid there once it has started, and nothing where none is named."""
        from utils import daemon
        options = watchdog.Options()
        options.parseOptions(["--worker-readyfile", "log/x.ready", "alertcenter"])
        monitor = watchdog.make_monitor(options)
        env = monitor.processes["alertcenter"][3]
        self.assertEqual(env[daemon.READY_FILE], os.path.abspath("log/x.ready"))
        path = os.path.abspath(self.mktemp())
        self.patch(os, "environ", dict(os.environ, **{daemon.READY_FILE: path}))
        daemon.mark_ready()
        self.assertEqual(watchdog.read_pid(path), os.getpid())
        os.remove(path)
        del os.environ[daemon.READY_FILE]
        daemon.mark_ready()
        self.assertFalse(os.path.exists(path))

    def test_tcp_addresses(self):
        """check connects to the svr.bind's TCP addresses, IPv6 literals included."""
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"svr": {"bind": ["tcp@[::1]:7316", "udp@127.0.0.1:7316",
                                        "TCP@127.0.0.1:7317"]}}, f)
        self.assertEqual(watchdog.tcp_addresses(path), [("::1", 7316), ("127.0.0.1", 7317)])

    def test_bad_bind(self):
        """check says which key of the config it cannot read (svr or svr.bind of the wrong
        kind, an address that is not one) and exits 1, with no traceback."""
        home = self.mktemp()
        os.makedirs(os.path.join(home, "log"))
        os.makedirs(os.path.join(home, "conf"))
        keeper = self.fake_process(home, "alertcenter.pid", "twistd", "watchdog", "alertcenter")
        worker = self.fake_process(home, "alertcenter.worker.pid", "twistd", "alertcenter")
        with open(os.path.join(home, "log", "alertcenter.ready"), "w") as f:
            f.write("%d\n" % worker.pid)
        path = os.path.join(home, "conf", "config.json")
        cases = [([1], "the configuration must be a JSON object, got array"),
                 ({"svr": "x"}, "svr: expected an object, got string"),
                 ({"svr": {"bind": 5}},
                  "svr.bind: expected an address or a list of addresses, got integer"),
                 ({"svr": {"bind": ["udp@127.0.0.1:1", None]}},
                  "svr.bind[1]: address must be a string, not None")]
        for data, reason in cases:
            with open(path, "w") as f:
                json.dump(data, f)
            self.assertEqual(watchdog.check(home, "alertcenter"),
                             (False, "alertcenter: cannot read %s: %s" % (path, reason)))
        self.assertIsNone(keeper.poll())

    def fake_process(self, home, pid_file, *words, cwd=None):
        """A process whose arguments are `words`, working in `home` (or `cwd`), its pid
        written to log/`pid_file`."""
        process = testing.popen_done([sys.executable, "-c", "import time; time.sleep(60)"]
                                     + list(words), cwd=cwd or home)
        self.addCleanup(process.wait)
        self.addCleanup(process.kill)
        with open(os.path.join(home, "log", pid_file), "w") as f:
            f.write(str(process.pid))
        return process

    def test_stale_pid_files_signal_nothing(self):
        """Pid files naming processes of other programs by now (after a crash and a
        reboot) are stale: stop signals none of them, check says so, start goes on."""
        home = self.mktemp()
        os.makedirs(os.path.join(home, "log"))
        self.stale_everywhere(home, [self.fake_process(home, name, "sleep")
                                     for name in ("readhistory.pid", "readhistory.worker.pid")])
        # a worker of another daemon is not this one's either
        worker = self.fake_process(home, "readhistory.worker.pid", "twistd", "matchengine")
        self.assertTrue(watchdog.stop(home, "readhistory", 1, lambda text: None))
        self.assertIsNone(worker.poll())

    def stale_everywhere(self, home, others):
        """`others` (processes the pid files of readhistory in `home` name) are not its
        daemons: stop signals none of them, check calls the pid file stale."""
        out = []
        self.assertTrue(watchdog.stop(home, "readhistory", 1, out.append))
        self.assertEqual(out, ["readhistory: not running"])
        self.assertEqual([other.poll() for other in others], [None] * len(others))
        ok, message = watchdog.check(home, "readhistory")
        self.assertIn("a stale pid file", message)

    def test_another_deployments_daemon(self):
        """Pid files naming the watchdog and worker of the same module in another
        deployment folder (pids used again): neither is this folder's, so check says
        stale, stop signals neither, and start is not refused."""
        home, other = self.mktemp(), os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(home, "log"))
        os.makedirs(other)
        others = [self.fake_process(home, "readhistory.pid", "twistd", "watchdog",
                                    "readhistory", cwd=other),
                  self.fake_process(home, "readhistory.worker.pid", "twistd", "readhistory",
                                    cwd=other)]
        self.stale_everywhere(home, others)
        self.assertIsNone(watchdog._orphan(home, "readhistory"))
        self.assertIsNone(watchdog._orphan(other, "readhistory"))     # no pid file there
        self.assertTrue(watchdog.is_daemon(others[1].pid, "readhistory", "worker", other))
        self.assertTrue(watchdog.is_daemon(others[1].pid, "readhistory", "worker"))

    def test_stale_worker_pid_removed_before_each_start(self):
        """Before it starts its worker the watchdog removes a worker pid file naming another
        program's process (twistd would refuse to start the worker for ever, taking it for a
        running one) and keeps one naming a running worker of this folder."""
        from twisted.internet.testing import MemoryReactorClock
        home = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(home, "log"))
        pid_file = os.path.join(home, "log", "alertcenter.worker.pid")
        options = watchdog.Options()
        options.parseOptions(["--worker-pidfile", pid_file, "alertcenter"])

        class Spawning(MemoryReactorClock):
            def spawnProcess(self, protocol, *args, **kw):
                spawned.append(os.path.exists(pid_file))
        spawned = []
        other = self.fake_process(home, "alertcenter.worker.pid", "sleep")
        cwd = os.getcwd()
        os.chdir(home)
        self.addCleanup(os.chdir, cwd)
        monitor = watchdog.make_monitor(options, Spawning())
        monitor.startService()
        self.assertEqual(spawned, [False])
        self.assertIsNone(other.poll())
        running = self.fake_process(home, "alertcenter.worker.pid", "twistd", "alertcenter")
        monitor = watchdog.make_monitor(options, Spawning())
        monitor.startService()
        self.assertEqual(spawned, [False, True])
        self.assertEqual(watchdog.read_pid(pid_file), running.pid)

    def test_alerts_from_the_watchdog(self):
        """With an `alert` section in the worker's config, the watchdog's fatal lines go to
        alertcenter; without one, or with a config it cannot read, they go nowhere."""
        from twisted.logger import Logger

        from utils import alert
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"alert": {"host": "matchengine", "addr": "127.0.0.1:1"}}, f)
        sent = []
        self.patch(alert.AlertSender, "send", lambda sender, text: sent.append(
            (sender.host, sender.addr, text)))
        options = watchdog.Options()
        options.parseOptions(["matchengine", "--config", path])
        observer = watchdog.alert_observer(options, None)
        Logger(namespace="watchdog", observer=observer).critical(
            "{name}: the worker ended {how}; starting it again", name="matchengine",
            how="by signal 9")
        Logger(namespace="watchdog", observer=observer).error("not sent")
        self.assertEqual(sent, [("matchengine", ("127.0.0.1", 1), "[fatal]watchdog: "
                                 "matchengine: the worker ended by signal 9; starting it "
                                 "again")])
        with open(path, "w") as f:
            json.dump({"svr": {}}, f)
        for args in (["matchengine", "--config", path], ["matchengine"],
                     ["matchengine", "--config=" + path + ".missing"]):
            options = watchdog.Options()
            options.parseOptions(args)
            self.assertIsNone(watchdog.alert_observer(options, None))

    def test_start_refuses_a_broken_config(self):
        """start and restart load the config as the worker will: a config they cannot use
        is reported, naming the key, and nothing is started or stopped (the watchdog would
        restart a worker that fails at once, forever, and say "started")."""
        import io
        home = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(home, "conf"))
        with open(os.path.join(os.path.dirname(watchdog.__file__), "..", "alertcenter",
                               "conf", "config.json")) as f:
            data = json.load(f)
        del data["svr"]["max_pkg_size"]
        with open(os.path.join(home, "conf", "config.json"), "w") as f:
            json.dump(data, f)
        # should it start after all, it is stopped again
        self.addCleanup(watchdog.stop, home, "alertcenter", 10, lambda text: None)
        err, out = io.StringIO(), io.StringIO()
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdout", out)
        self.assertEqual(watchdog.main(["start", home, "alertcenter"]), 1)
        self.assertIn("alertcenter: not started: ", err.getvalue())
        self.assertIn("svr.max_pkg_size: required key missing", err.getvalue())
        self.assertEqual(out.getvalue(), "")
        self.assertFalse(os.path.exists(os.path.join(home, "log", "alertcenter.pid")))
        # restart refuses it before it stops the running daemon
        os.makedirs(os.path.join(home, "log"))
        running = self.fake_process(home, "alertcenter.pid", "twistd", "watchdog",
                                    "alertcenter")
        self.assertEqual(watchdog.main(["restart", home, "alertcenter"]), 1)
        self.assertIn("svr.max_pkg_size: required key missing", err.getvalue())
        self.assertEqual(out.getvalue(), "")
        self.assertIsNone(running.poll())

    def test_worker_end_logged(self):
        """A worker that ends while the watchdog runs is logged as critical, with how it
        ended, and started again; one that stopped as asked (status 0) stops the watchdog
        with it."""
        from twisted.internet.error import ProcessDone, ProcessTerminated
        from twisted.internet.testing import MemoryReactorClock
        from twisted.logger import LogLevel, capturedLogs
        from twisted.python.failure import Failure
        options = watchdog.Options()
        options.parseOptions(["alertcenter"])
        class Spawning(MemoryReactorClock):
            def spawnProcess(self, protocol, *args, **kw):
                spawned.append(args)
        spawned = []
        reactor = Spawning()
        reactor.running = True
        monitor = watchdog.make_monitor(options, reactor)
        monitor.startService()
        with capturedLogs() as events:
            monitor._monitoredProcessExited(
                "alertcenter", Failure(ProcessTerminated(exitCode=1)))
            reactor.advance(2)
            monitor._monitoredProcessExited(
                "alertcenter", Failure(ProcessTerminated(signal=9)))
            reactor.advance(2)
            self.assertFalse(reactor.hasStopped)
            monitor._monitoredProcessExited("alertcenter", Failure(ProcessDone(0)))
            reactor.advance(2)
        lines = [(e["log_level"], e["how"]) for e in events if "how" in e]
        self.assertEqual(lines, [(LogLevel.critical, "with status 1"),
                                 (LogLevel.critical, "by signal 9")])
        self.assertEqual(len(spawned), 3)      # the first, and once after each failure
        self.assertTrue(reactor.hasStopped)
        self.assertEqual(monitor.restart["alertcenter"].active(), False)

    def test_usage(self):
        """A wrong command line prints the usage and exits 2."""
        import io
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.assertEqual(watchdog.main(["bogus"]), 2)
        self.assertIn("usage: python -m utils.watchdog", err.getvalue())


# a worker that takes no notice of SIGTERM; it writes its pid to argv[1] once it is so
DEAF = ("import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)")
# one that ends on SIGTERM
OBEDIENT = ("import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
            "time.sleep(60)")


class StopTests(TestCase):
    """The watchdog's stop waits for its worker: SIGTERM, then SIGKILL after kill-time."""

    timeout = 60

    async def stopping(self, program, kill_time):
        """Start a monitor whose worker runs `program`, stop it; (seconds the stop's
        Deferred took, the worker's pid)."""
        from twisted.internet import reactor
        options = watchdog.Options()
        options.parseOptions(["--kill-time", str(kill_time), "alertcenter"])
        monitor = watchdog.make_monitor(options, reactor)
        pid_file = os.path.abspath(self.mktemp())
        monitor.removeProcess("alertcenter")
        monitor.addProcess("alertcenter", [sys.executable, "-c", program, pid_file])
        monitor.startService()
        self.addCleanup(lambda: monitor.running and monitor.stopService())
        await testing.until(lambda: watchdog.read_pid(pid_file), 20, "the worker started")
        pid = watchdog.read_pid(pid_file)
        started = time.monotonic()
        stopped = monitor.stopService()
        self.assertFalse(stopped.called)
        await stopped
        took = time.monotonic() - started
        self.assertFalse(watchdog._running(pid))
        self.assertEqual(monitor.protocols, {})
        return took, pid

    async def deaf(self):
        took, pid = await self.stopping(DEAF, 0.5)
        self.assertGreaterEqual(took, 0.5)
        self.assertLess(took, 10)

    def test_kill_after_kill_time(self):
        """A worker that does not end on SIGTERM is killed after kill-time, and the stop
        waits for it: no worker outlives its watchdog."""
        return defer.Deferred.fromCoroutine(self.deaf())

    async def obedient(self):
        took, pid = await self.stopping(OBEDIENT, 30)
        self.assertLess(took, 10)

    def test_stop_as_soon_as_the_worker_ends(self):
        """A worker that ends on SIGTERM ends the stop at once, without waiting out the
        kill-time."""
        return defer.Deferred.fromCoroutine(self.obedient())

    def test_no_worker(self):
        """A stop while no worker runs (one waiting to be started again) ends at once."""
        from twisted.internet.testing import MemoryReactorClock
        options = watchdog.Options()
        options.parseOptions(["alertcenter"])
        monitor = watchdog.make_monitor(options, MemoryReactorClock())
        self.assertIsNone(self.successResultOf(monitor.stopService()))

    def test_twistd_waits_for_its_worker(self):
        """`twistd watchdog` given SIGTERM, its worker stopped (SIGSTOP), ends only once it
        has killed the worker after kill-time."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        worker_pid = os.path.join(workdir, "w.pid")
        from utils.daemon import TWISTD
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [testing.ROOT,
                                                          env.get("PYTHONPATH")]))
        keeper = subprocess.Popen(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile", os.path.join(workdir, "wd.pid"),
             "--logfile", os.path.join(workdir, "wd.log"), "watchdog", "--kill-time", "1",
             "--worker-pidfile", worker_pid, "--worker-logfile", os.devnull, "web",
             "--listen", "tcp:0:interface=127.0.0.1"], cwd=workdir, env=env)
        self.addCleanup(lambda: keeper.poll() is None and keeper.kill())
        self.assertTrue(testing.wait_until(lambda: watchdog.read_pid(worker_pid), 30))
        worker = watchdog.read_pid(worker_pid)
        self.addCleanup(lambda: watchdog._running(worker) and os.kill(worker, signal.SIGKILL))
        os.kill(worker, signal.SIGSTOP)
        started = time.monotonic()
        keeper.send_signal(signal.SIGTERM)
        # twistd ends by the signal it was stopped with
        self.assertEqual(keeper.wait(30), -signal.SIGTERM)
        self.assertGreaterEqual(time.monotonic() - started, 1)
        self.assertFalse(watchdog._running(worker))


class DeploymentTests(TestCase):
    """Each daemon from a deployment folder made of its bin/, shell/ and a conf/config.json."""

    timeout = 240

    def setUp(self):
        sentinel = testing.require("sentinel")
        testing.clean_redis(self, REDIS_DB)
        broker, log_db, history_db = testing.exchange_stores(self, "wd")
        self.configs = {name: (config, port) for name, config, port in
                        testing.exchange_configs(
                            broker, log_db, history_db,
                            {"name": sentinel["name"], "addr": sentinel["addr"],
                             "db": REDIS_DB})}

    def helpers(self, *modules):
        """Run other daemons the one under test needs, the plain way."""
        workdir = os.path.abspath(self.mktemp())
        for module in modules:
            config, port = self.configs[module]
            daemon = testing.DaemonProcess(module, config, workdir).start()
            self.addCleanup(daemon.stop)
            daemon.wait_port(port)

    def deploy(self, module):
        import json
        home = os.path.abspath(self.mktemp())
        for part in ("bin", "shell"):
            shutil.copytree(os.path.join(testing.ROOT, module, part), os.path.join(home, part))
        os.makedirs(os.path.join(home, "conf"))
        os.makedirs(os.path.join(home, "log"))
        with open(os.path.join(home, "conf", "config.json"), "w") as f:
            json.dump(self.configs[module][0], f)
        self.addCleanup(self.stop_all, home, module)
        return home

    def run_script(self, home, script):
        env = dict(os.environ, PYTHON=sys.executable)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [testing.ROOT,
                                                          env.get("PYTHONPATH")]))
        proc = subprocess.run([os.path.join(home, script)], env=env, capture_output=True,
                              text=True, timeout=120)
        return proc.returncode, proc.stdout + proc.stderr

    def stop_all(self, home, module):
        paths = watchdog.paths(home, module)
        if not watchdog.stop(home, module, out=lambda text: None):
            for key in ("pid", "worker_pid"):
                pid = watchdog.read_pid(paths[key])
                if watchdog._running(pid):
                    os.kill(pid, signal.SIGKILL)

    def wait_up(self, home, module, seconds=60):
        def up():
            ok, message = watchdog.check(home, module)
            return ok and "starting" not in message
        if not testing.wait_until(up, seconds, 0.02):
            with open(watchdog.paths(home, module)["log"]) as f:
                log = f.read()[-3000:]
            self.fail("%s not up: %s\n%s" % (module, watchdog.check(home, module)[1], log))

    def lifecycle(self, module):
        home = self.deploy(module)
        paths = watchdog.paths(home, module)
        status, out = self.run_script(home, "shell/check_alive.sh")
        self.assertEqual(status, 1, out)
        self.assertIn("down (no pid file", out)

        status, out = self.run_script(home, "bin/" + module)
        self.assertEqual(status, 0, out)
        self.wait_up(home, module)
        status, out = self.run_script(home, "shell/check_alive.sh")
        self.assertEqual(status, 0, out)
        self.assertIn("%s: up (" % module, out)
        keeper = watchdog.read_pid(paths["pid"])
        worker = watchdog.read_pid(paths["worker_pid"])
        self.assertEqual(watchdog.read_pid(paths["ready"]), worker)
        if watchdog._probe(module) is not None:
            # a frozen daemon, whose port the kernel still accepts connections for, is down
            os.kill(worker, signal.SIGSTOP)
            try:
                ok, message = watchdog.check(home, module)
            finally:
                os.kill(worker, signal.SIGCONT)
            self.assertFalse(ok, message)
            self.assertIn("does not answer: timed out", message)
            self.assertTrue(watchdog.check(home, module)[0])
        self.assertEqual(testing.children(keeper), [worker])

        # SIGKILL the worker: down at once, a new worker within a second, then up again
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        self.assertTrue(testing.wait_until(lambda: not watchdog._running(worker), 1.0, 0.005))
        ok, message = watchdog.check(home, module)
        self.assertFalse(ok, message)
        self.assertIn("down", message)
        self.assertTrue(testing.wait_until(
            lambda: [p for p in testing.children(keeper) if p != worker], 1.0, 0.01),
            "%s: no new worker within 1 s" % module)
        restarted = time.monotonic() - killed
        self.assertLess(restarted, 1.0)
        self.wait_up(home, module)
        new_worker = watchdog.read_pid(paths["worker_pid"])
        self.assertNotEqual(new_worker, worker)
        self.assertEqual(testing.children(keeper), [new_worker])
        status, out = self.run_script(home, "shell/check_alive.sh")
        self.assertEqual(status, 0, out)

        # restart.sh: SIGTERM (clean stop of the worker), then a new watchdog and worker
        status, out = self.run_script(home, "shell/restart.sh")
        self.assertEqual(status, 0, out)
        self.assertIn("%s: stopped" % module, out)
        self.assertFalse(watchdog._running(keeper))
        self.assertFalse(watchdog._running(new_worker))
        self.wait_up(home, module)
        self.assertNotEqual(watchdog.read_pid(paths["pid"]), keeper)

        # the checks leave no warning in the daemon's log (a gateway that refused them did)
        self.assertEqual([line for line in self.module_log(home, module).splitlines()
                          if "[warn]" in line and "dropping connection" in line
                          or "400 to" in line], [])

        # stopped: check_alive says so
        self.assertTrue(watchdog.stop(home, module, out=lambda text: None))
        status, out = self.run_script(home, "shell/check_alive.sh")
        self.assertEqual(status, 1, out)
        self.assertIn("down", out)

    def test_matchengine(self):
        self.lifecycle("matchengine")

    def module_log(self, home, module):
        import glob
        text = ""
        for path in sorted(glob.glob(os.path.join(home, "log", module + "*.log"))):
            with open(path, errors="replace") as f:
                text += f.read()
        return text

    def test_signals(self):
        """The original's signals: SIGTTIN and SIGTTOU change the log's level, SIGUSR1 is
        noted, SIGQUIT to the worker stops it cleanly and the watchdog with it, SIGQUIT to
        the watchdog stops both; a worker left by a killed watchdog is refused a neighbour
        by start and stopped by stop."""
        module = "matchengine"
        home = self.deploy(module)
        paths = watchdog.paths(home, module)
        status, out = self.run_script(home, "bin/" + module)
        self.assertEqual(status, 0, out)
        self.wait_up(home, module)
        keeper, worker = (watchdog.read_pid(paths[key]) for key in ("pid", "worker_pid"))
        for number in (signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
            os.kill(worker, number)
        self.assertTrue(testing.wait_until(
            lambda: all("(%s) received" % name in self.module_log(home, module)
                        for name in ("SIGTTIN", "SIGTTOU", "SIGUSR1")), 10),
            self.module_log(home, module)[-2000:])
        text = self.module_log(home, module)
        self.assertIn("signal %d (SIGTTIN) received, logging level up: 0x" % signal.SIGTTIN,
                      text)
        self.assertIn("(SIGTTOU) received, logging level down: 0x", text)
        self.assertTrue(watchdog.check(home, module)[0])

        os.kill(worker, signal.SIGQUIT)
        self.assertTrue(testing.wait_until(
            lambda: not watchdog._running(worker) and not watchdog._running(keeper), 30),
            "the worker or the watchdog still runs after SIGQUIT to the worker")
        text = self.module_log(home, module)
        self.assertIn("(SIGQUIT) received, exiting", text)
        self.assertIn("process %d stopped" % worker, text)

        status, out = self.run_script(home, "bin/" + module)
        self.assertEqual(status, 0, out)
        self.wait_up(home, module)
        keeper, worker = (watchdog.read_pid(paths[key]) for key in ("pid", "worker_pid"))
        os.kill(keeper, signal.SIGKILL)
        self.assertTrue(testing.wait_until(lambda: not watchdog._running(keeper), 5))
        self.assertTrue(watchdog._running(worker))
        status, out = self.run_script(home, "bin/" + module)
        self.assertEqual(status, 1, out)
        self.assertIn("worker pid %d, without its watchdog" % worker, out)
        lines = []
        self.assertTrue(watchdog.stop(home, module, out=lines.append))
        self.assertFalse(watchdog._running(worker))
        self.assertIn("the watchdog is gone; stopping its worker pid %d" % worker, lines[0])

        status, out = self.run_script(home, "bin/" + module)
        self.assertEqual(status, 0, out)
        self.wait_up(home, module)
        keeper, worker = (watchdog.read_pid(paths[key]) for key in ("pid", "worker_pid"))
        os.kill(keeper, signal.SIGQUIT)
        self.assertTrue(testing.wait_until(
            lambda: not watchdog._running(worker) and not watchdog._running(keeper), 30),
            "the worker or the watchdog still runs after SIGQUIT to the watchdog")
        self.assertIn("process %d stopped" % worker, self.module_log(home, module))

    def test_readhistory(self):
        self.lifecycle("readhistory")

    def test_accesshttp(self):
        self.lifecycle("accesshttp")

    def test_marketprice(self):
        self.helpers("matchengine", "accesshttp")     # its market list comes from them
        self.lifecycle("marketprice")

    def test_accessws(self):
        self.lifecycle("accessws")

    def test_alertcenter(self):
        self.lifecycle("alertcenter")
