# -*- test-case-name: utils.test.test_daemon -*-
"""The options and the service tree every daemon's plugin is made of."""

import json
import os

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, Logger, capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from readhistory import config as readhistory_config
from readhistory import tap as readhistory_tap
from utils.config import ConfigError
from utils import daemon
from utils.daemon import OrderedMultiService, daemon_options, service_tree


class OptionsTests(SynchronousTestCase):

    def write(self, data):
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump(data, f)
        return path

    def test_default_config(self):
        """--config defaults to the module's own conf/config.json, which loads."""
        options = readhistory_tap.Options()
        options.parseOptions([])
        self.assertTrue(options["config"].endswith(os.path.join("readhistory", "conf",
                                                                "config.json")))
        self.assertEqual(options["loaded"].svr.bind[0], "tcp@127.0.0.1:7424")

    def test_bad_config_names_key(self):
        """A wrong value is a usage error naming the file and the key."""
        with open(readhistory_tap.Options()["config"]) as f:
            data = json.load(f)
        data["svr"]["bind"] = ["nonsense"]
        path = self.write(data)
        error = self.assertRaises(usage.UsageError, readhistory_tap.Options().parseOptions,
                                  ["--config", path])
        self.assertIn(path, str(error))
        self.assertIn("svr.bind[0]", str(error))

    def test_missing_file(self):
        error = self.assertRaises(usage.UsageError, readhistory_tap.Options().parseOptions,
                                  ["--config", "/nonexistent/config.json"])
        self.assertIn("/nonexistent/config.json", str(error))

    def test_log_directory(self):
        """The directory of log.path is made when missing; one that cannot be made, or a log
        file that cannot be written, is a usage error naming the key (the daemon would have
        run without a log)."""
        with open(readhistory_tap.Options()["config"]) as f:
            data = json.load(f)
        base = os.path.abspath(self.mktemp())
        data["log"]["path"] = os.path.join(base, "deeper", "readhistory")
        readhistory_tap.Options().parseOptions(["--config", self.write(data)])
        self.assertTrue(os.path.isdir(os.path.join(base, "deeper")))
        blocker = os.path.join(base, "a-file")
        with open(blocker, "w") as f:
            f.write("a file where the directory would be\n")
        data["log"]["path"] = os.path.join(blocker, "readhistory")
        path = self.write(data)
        error = self.assertRaises(usage.UsageError, readhistory_tap.Options().parseOptions,
                                  ["--config", path])
        self.assertIn("%s: log.path: cannot make the directory %s" % (path, blocker),
                      str(error))
        # the log file itself a directory
        data["log"]["path"] = os.path.join(base, "deeper", "readhistory")
        os.mkdir(os.path.join(base, "deeper", "readhistory.log"))
        path = self.write(data)
        error = self.assertRaises(usage.UsageError, readhistory_tap.Options().parseOptions,
                                  ["--config", path])
        self.assertIn("%s: log.path: %s cannot be written to"
                      % (path, os.path.join(base, "deeper", "readhistory.log")), str(error))

    def test_prepare(self):
        """prepare derives more from the config; its ConfigError is a usage error too."""
        def prepare(options):
            raise ConfigError("markets[0]: unknown asset")
        Options = daemon_options(readhistory_tap.__file__, readhistory_config.load, "x",
                                 prepare)
        error = self.assertRaises(usage.UsageError, Options().parseOptions, [])
        self.assertIn("markets[0]", str(error))


class ServiceTreeTests(SynchronousTestCase):

    def test_log_and_alert(self):
        """The tree starts with the log service; an alert block adds the alert observer."""
        data = {"log": {"path": self.mktemp(), "flag": "fatal,error"},
                "alert": {"host": "readhistory", "addr": "127.0.0.1:4444"},
                "svr": {"bind": ["tcp@127.0.0.1:7424"], "max_pkg_size": 10240},
                "db_history": {"host": "127.0.0.1", "user": "u", "pass": "", "name": "n"}}
        cfg = readhistory_config.load_data(data)
        top = service_tree(cfg, {"stderr": False}, Clock())
        self.addCleanup(top.log_setup.remove)
        self.assertEqual(len(list(top)), 1)
        self.assertEqual(len(top.log_setup.observers), 2)      # file and alert
        data.pop("alert")
        top = service_tree(readhistory_config.load_data(data), {"stderr": False}, Clock())
        self.addCleanup(top.log_setup.remove)
        self.assertEqual(len(top.log_setup.observers), 1)
        # without alerts, a warning says so when the daemon starts (not for alertcenter)
        for alerts, expected in ((True, 1), (False, 0)):
            top = service_tree(readhistory_config.load_data(data), {"stderr": False},
                               Clock(), alerts=alerts)
            self.addCleanup(top.log_setup.remove)
            with capturedLogs() as events:
                top.startService()
                top.stopService()
            self.assertEqual(len([e for e in events if "alert: no such section" in
                                  e.get("text", "")]), expected)

    def test_children_stop_one_after_the_other(self):
        """The last child added stops first; an earlier one is asked only once the later
        one's stop has finished, and a failing stop does not keep the others running."""
        stops = []
        held = defer.Deferred()

        class Child(service.Service):
            def __init__(self, name, result=None):
                self.setName(name)
                self.result = result

            def stopService(self):
                service.Service.stopService(self)
                stops.append(self.name)
                if isinstance(self.result, Exception):
                    raise self.result
                return self.result

        top = OrderedMultiService()
        for child in (Child("stores"), Child("engine", held), Child("gateway"),
                      Child("broken", RuntimeError("cannot stop"))):
            child.setServiceParent(top)
        top.startService()
        done = top.stopService()
        self.assertEqual(stops, ["broken", "gateway", "engine"])
        self.assertNoResult(done)
        held.callback(None)
        self.assertEqual(stops, ["broken", "gateway", "engine", "stores"])
        self.successResultOf(done)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(any(child.running for child in top))


class GiveUpTests(SynchronousTestCase):

    def setUp(self):
        self.patch(daemon, "_gave_up", [])

    def give_up(self, reactor):
        try:
            raise OSError("address in use")
        except OSError:
            with capturedLogs() as events:
                daemon.give_up(reactor, Logger(), "x could not listen")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        return events

    def test_before_the_reactor_runs(self):
        """A daemon failing while the services start stops the reactor once it runs."""
        reactor = MemoryReactorClock()
        events = self.give_up(reactor)
        self.assertFalse(reactor.hasStopped)
        self.assertEqual([e["log_level"] for e in events], [LogLevel.critical])
        self.assertIsInstance(events[0]["log_failure"].value, OSError)
        self.assertEqual(daemon._gave_up, ["x could not listen"])
        reactor.run()
        self.assertTrue(reactor.hasStopped)

    def test_while_running(self):
        reactor = MemoryReactorClock()
        reactor.run()
        self.give_up(reactor)
        self.assertTrue(reactor.hasStopped)

    def test_several_before_the_reactor_runs(self):
        """Daemons giving up together while the services start (several ports taken) ask
        the reactor to stop once: a second stop would fail with ReactorNotRunning, logged
        as one more fatal traceback."""
        reactor = StrictStopReactor()
        for _ in range(3):
            self.give_up(reactor)
        self.assertEqual(len(reactor.whenRunningHooks), 1)
        self.assertEqual(len(daemon._gave_up), 3)
        reactor.start()
        self.assertEqual(reactor.stops, 1)

    def test_several_while_running(self):
        """A daemon giving up while the reactor is stopping already leaves it stopping."""
        reactor = StrictStopReactor()
        reactor.start()
        self.give_up(reactor)
        self.give_up(reactor)
        self.assertEqual(reactor.stops, 1)


class StrictStopReactor(MemoryReactorClock):
    """A memory reactor that refuses a second stop as a real one does, and counts stops.

    Unlike MemoryReactor.run, `start` leaves it running once the start hooks have run, and
    `running` stays true while it stops, as a real reactor's does until it has stopped."""

    def __init__(self):
        super().__init__()
        self.stops = 0
        self.stopping = False

    def start(self):
        self.running = self.hasRun = True
        for f, args, kwargs in self.whenRunningHooks:
            f(*args, **kwargs)

    def stop(self):
        from twisted.internet.error import ReactorNotRunning
        if not self.running or self.stopping:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")
        self.stops += 1
        self.stopping = True


class WorkerTreeTests(SynchronousTestCase):
    """accesshttp with worker_num 2: the listener's tree, the workers' trees and command."""

    def options(self, *args):
        from accesshttp import tap
        with open(tap.Options()["config"]) as f:
            data = json.load(f)
        data.update(worker_num=2, log={"path": self.mktemp(), "flag": "error"})
        data.pop("alert", None)
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump(data, f)
        options = tap.Options()
        options.parseOptions(["--config", path] + list(args))
        return tap, options

    def test_listener_and_worker_command(self):
        """Without --worker the tree is the listener's: it does not rotate the log, and
        starts workers with the same config, --worker N and --stderr when given."""
        from network.handoff import Listener
        from utils.daemon import worker_command
        tap, options = self.options("--stderr")
        top = tap.makeService(options, reactor=Clock())
        self.addCleanup(top.log_setup.remove)
        listener = list(top)[-1]
        self.assertIsInstance(listener, Listener)
        self.assertEqual(listener.pool.count, 2)
        self.assertEqual(top.log_setup.file_observer.max_size, 0)
        command = worker_command("accesshttp", options, 1)
        self.assertEqual(command[-6:], ["accesshttp", "--config",
                                        os.path.abspath(options["config"]), "--worker", "1",
                                        "--stderr"])
        self.assertIn("--pidfile", command)

    def test_only_worker_zero_rotates(self):
        """Worker 0 rotates the log as configured, the others never; each adopts into its
        gateway's factory, started after the gateway.  Worker 0 alone raises the alerts of
        the backends' outages."""
        import socket

        from accesshttp.server import AccessHTTP
        from network import handoff
        sizes, alert_after = [], []
        for index in (0, 1):
            tap, options = self.options("--worker", str(index))
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.addCleanup(ours.close)
            self.patch(handoff, "WORKER_FD", theirs.detach())
            top = tap.makeService(options, reactor=MemoryReactorClock())
            self.addCleanup(top.log_setup.remove)
            gateway, adopter = list(top)[1:]
            self.assertIsInstance(gateway, AccessHTTP)
            self.assertFalse(gateway.listen_enabled)
            self.assertIs(adopter.factory, gateway.factory)
            adopter.socket.close()
            sizes.append(top.log_setup.file_observer.max_size)
            alert_after.append({o.alert_after for o in gateway.outages.values()})
        self.assertEqual(sizes[1], 0)
        self.assertGreater(sizes[0], 0)
        self.assertEqual(alert_after, [{10.0}, {None}])


class LimitTests(SynchronousTestCase):
    """`process.file_limit`: raised at start, never lowered, capped by the hard limit."""

    def setUp(self):
        import resource
        self.resource = resource
        before = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, before)
        hard = before[1]
        if hard == resource.RLIM_INFINITY or hard < 200:
            raise SkipTest("no finite open-files limit to test against")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard - 100, hard))
        self.before = (hard - 100, hard)

    def test_raised_not_lowered(self):
        from utils.daemon import raise_limits
        soft, hard = self.before
        self.assertEqual(raise_limits({"file_limit": soft + 10, "core_limit": 0}), [])
        self.assertEqual(self.resource.getrlimit(self.resource.RLIMIT_NOFILE)[0], soft + 10)
        self.assertEqual(raise_limits({"file_limit": soft, "core_limit": 0}), [])
        self.assertEqual(self.resource.getrlimit(self.resource.RLIMIT_NOFILE)[0], soft + 10)
        self.assertEqual(raise_limits(None), [])

    def test_beyond_the_hard_limit(self):
        """Without the privilege to raise the hard limit, the soft one reaches it and a
        warning names the key; with it, the limit is what was asked."""
        from utils.daemon import raise_limits
        soft, hard = self.before
        warnings = raise_limits({"file_limit": hard + 1, "core_limit": 0})
        now = self.resource.getrlimit(self.resource.RLIMIT_NOFILE)
        if warnings:
            self.assertEqual(now, (hard, hard))
            self.assertIn("process.file_limit", warnings[0])
        else:
            self.assertEqual(now[0], hard + 1)

    def test_daemon_tree_applies_it(self):
        """service_tree raises the limit from the config before anything listens."""
        soft, hard = self.before
        data = {"process": {"file_limit": soft + 5},
                "log": {"path": self.mktemp(), "flag": "fatal,error,warn"},
                "svr": {"bind": ["tcp@127.0.0.1:7424"], "max_pkg_size": 10240},
                "db_history": {"host": "127.0.0.1", "user": "u", "pass": "", "name": "n"}}
        top = service_tree(readhistory_config.load_data(data), {"stderr": False}, Clock())
        self.addCleanup(top.log_setup.remove)
        self.assertEqual(self.resource.getrlimit(self.resource.RLIMIT_NOFILE)[0], soft + 5)

    def test_warning_logged_once_at_start(self):
        """A limit that cannot be raised is logged when the daemon starts, once: twistd
        replays what was logged before logging began, which wrote it twice."""
        soft, hard = self.before
        path = self.mktemp()
        data = {"process": {"file_limit": hard + 1},
                "log": {"path": path, "flag": "fatal,error,warn"},
                "svr": {"bind": ["tcp@127.0.0.1:7424"], "max_pkg_size": 10240},
                "db_history": {"host": "127.0.0.1", "user": "u", "pass": "", "name": "n"}}
        top = service_tree(readhistory_config.load_data(data), {"stderr": False}, Clock())
        self.addCleanup(top.log_setup.remove)
        top.log_setup.flush()
        self.assertFalse(os.path.exists(path + ".log") and os.path.getsize(path + ".log"))
        if self.resource.getrlimit(self.resource.RLIMIT_NOFILE)[1] > hard:
            raise SkipTest("the hard limit could be raised: nothing to warn about")
        top.startService()
        top.log_setup.flush()
        with open(path + ".log") as f:
            self.assertEqual(f.read().count("process.file_limit"), 1)
