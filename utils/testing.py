# -*- test-case-name: utils.test.test_testing -*-
"""Helpers for integration tests that talk to the real MariaDB, Redis and Kafka broker.

`depends/services.py up` starts them and writes their addresses to
`depends/run/services.json`; these helpers read that file.  A test that needs a service
calls `require("mysql")` (or "redis", "sentinel", "kafka"): when the service does not answer
the test is skipped, or fails when VIABTC_REQUIRE_SERVICES=1 (as `make test` sets it), so
a broken setup can never pass silently.
"""

import json
import os
import socket
import subprocess
import sys
import time

from twisted.trial.unittest import SkipTest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICES_FILE = os.path.join(ROOT, "depends", "run", "services.json")

DEFAULTS = {
    "mysql": {"host": "127.0.0.1", "port": 3306, "user": "viabtc_test",
              "password": "viabtc_test",
              "databases": {"trade_log": "viabtc_test_trade_log",
                            "trade_history": "viabtc_test_trade_history",
                            "misc": "viabtc_test_misc"}},
    "redis": {"host": "127.0.0.1", "port": 6379},
    "sentinel": {"name": "viabtc-test", "addr": ["127.0.0.1:26479"]},
    "kafka": "127.0.0.1:19092",
}


def services():
    path = os.environ.get("VIABTC_SERVICES", SERVICES_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return DEFAULTS


def _host_port(name, info):
    if name == "kafka":
        host, port = info.split(",")[0].split(":")
    elif name == "sentinel":
        host, port = info["addr"][0].split(":")
    else:
        host, port = info["host"], info["port"]
    return host, int(port)


def answers(host, port, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(name):
    """Return the service's settings, or skip/fail the test when it does not answer."""
    info = services()[name]
    host, port = _host_port(name, info)
    if not answers(host, port):
        message = ("%s does not answer on %s:%d; run `python depends/services.py up`"
                   % (name, host, port))
        if os.environ.get("VIABTC_REQUIRE_SERVICES") == "1":
            raise AssertionError(message)
        raise SkipTest(message)
    return info


def mysql_connect_kwargs(database="misc"):
    """Keyword arguments for pymysql.connect to one of the test databases."""
    info = require("mysql")
    return dict(host=info["host"], port=int(info["port"]), user=info["user"],
                password=info["password"], database=info["databases"][database],
                charset="utf8mb4")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, seconds, interval=0.05):
    """Poll a condition of a real outside process (integration tests only)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class KafkaBroker:
    """A private Kafka-compatible broker for tests that stop and restart one."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.proc = None

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def start(self):
        require("kafka")  # the shared broker answering proves the binary works here
        script = os.path.join(ROOT, "depends", "services.py")
        self.proc = subprocess.Popen(
            [sys.executable, script, "broker", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        if not wait_until(lambda: answers("127.0.0.1", self.port), 20):
            self.stop()
            raise AssertionError("test broker did not start on port %d" % self.port)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
