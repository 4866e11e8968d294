# -*- test-case-name: accesshttp.test.test_end_to_end -*-
"""matchengine, readhistory and accesshttp as real daemons: the original's HTTP scenario."""

import json
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from utils import testing

# the team's scenario tools, when this checkout sits beside them
TOOLS = os.path.join(os.path.dirname(testing.ROOT), "shared", "tools")
EXPECTED = testing.reference("http-scenario.jsonl")


def replay(url, expected_path, actual_path):
    """Send the recorded requests again, in order, and record the answers like the tool."""
    import time
    import urllib.error
    import urllib.request
    history = {"balance.history", "order.deals", "order.finished", "order.finished_detail",
               "market.user_deals"}
    waited = False
    with open(expected_path) as f, open(actual_path, "w") as out:
        for line in f:
            record = json.loads(line)
            request = record.get("request")
            if request is not None:
                if request["method"] in history and not waited:
                    time.sleep(1.0)   # history is written after the operation log commits
                    waited = True
                body = json.dumps(request).encode()
            else:
                body = record["request_raw"].encode()
            try:
                r = urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10)
                status, data = r.status, r.read()
            except urllib.error.HTTPError as e:
                status, data = e.code, e.read()
            if request is not None:
                answer = {"request": request, "status": status, "response": json.loads(data)}
            else:
                answer = {"request_raw": record["request_raw"], "status": status,
                          "response_raw": data.decode()}
            out.write(json.dumps(answer, sort_keys=True) + "\n")


def differences(expected_path, actual_path):
    from matchengine.test.test_engine import norm
    with open(expected_path) as f:
        expected = [json.loads(line) for line in f]
    with open(actual_path) as f:
        actual = [json.loads(line) for line in f]
    return [(e, a) for e, a in zip(expected, actual) if norm(e) != norm(a)] + (
        [("missing", len(expected) - len(actual))] if len(actual) != len(expected) else [])


class ScenarioTests(TestCase):

    timeout = 300

    def test_http_scenario(self):
        """All 69 calls of the recorded scenario get the original's answers."""
        broker, log_db, history_db = testing.exchange_stores(self, "e2e")
        workdir = os.path.abspath(self.mktemp())
        me_port, rh_port, http_port = (testing.free_port() for _ in range(3))
        daemons = [
            (testing.DaemonProcess("matchengine", testing.base_config(
                "matchengine", svr={"bind": ["tcp@127.0.0.1:%d" % me_port],
                                    "max_pkg_size": 102400, "heartbeat_check": False},
                cli="tcp@127.0.0.1:%d" % testing.free_port(),
                db_log=testing.mysql_section(log_db),
                db_history=testing.mysql_section(history_db),
                brokers=broker), workdir), me_port),
            (testing.DaemonProcess("readhistory", testing.base_config(
                "readhistory", svr={"bind": ["tcp@127.0.0.1:%d" % rh_port],
                                    "max_pkg_size": 1000000, "heartbeat_check": False},
                db_history=testing.mysql_section(history_db)), workdir), rh_port),
            (testing.DaemonProcess("accesshttp", testing.base_config(
                "accesshttp", svr={"bind": ["tcp@127.0.0.1:%d" % http_port],
                                   "max_pkg_size": 102400},
                monitor={"bind": "tcp@127.0.0.1:%d" % testing.free_port(),
                         "max_pkg_size": 1024},
                matchengine={"name": "matchengine", "addr": ["tcp@127.0.0.1:%d" % me_port],
                             "max_pkg_size": 2000000},
                readhistory={"name": "readhistory", "addr": ["tcp@127.0.0.1:%d" % rh_port],
                             "max_pkg_size": 2000000},
                marketprice={"name": "marketprice",
                             "addr": ["tcp@127.0.0.1:%d" % testing.free_port()],
                             "max_pkg_size": 2000000}), workdir), http_port)]
        for daemon, port in daemons:
            daemon.start()
            self.addCleanup(daemon.stop)
        for daemon, port in daemons:
            daemon.wait_port(port)
        # the gateway connects to its backends within a second of starting
        testing.wait_until(lambda: False, 1.5)
        assert_scenario(self, "http://127.0.0.1:%d/" % http_port, workdir)


def assert_scenario(test, url, workdir):
    """Replay the recorded HTTP scenario at `url` (with the team's tools when they are
    beside this checkout) and fail `test` unless every answer is the original's."""
    actual = os.path.join(workdir, "actual.jsonl")
    if os.path.exists(os.path.join(TOOLS, "scenario_http.py")):
        with open(actual, "w") as out:
            subprocess.run([sys.executable, os.path.join(TOOLS, "scenario_http.py"), url,
                            "--wait-history", "0.5"], stdout=out, check=True, timeout=120)
        result = subprocess.run([sys.executable, os.path.join(TOOLS, "compare.py"),
                                 EXPECTED, actual], capture_output=True, text=True)
        test.assertEqual(result.returncode, 0, result.stdout[-3000:])
        test.assertIn("69 of 69 calls match", result.stdout)
    else:
        replay(url, EXPECTED, actual)
        test.assertEqual(differences(EXPECTED, actual), [])
