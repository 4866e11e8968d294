# -*- test-case-name: utils.test.test_daemon -*-
"""The options and the service tree every daemon's plugin is made of."""

import json
import os

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from readhistory import config as readhistory_config
from readhistory import tap as readhistory_tap
from utils.config import ConfigError
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
