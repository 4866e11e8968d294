"""The outage drill's reading of the daemons' logs and its verdict."""

import datetime
import os

from twisted.trial.unittest import SynchronousTestCase

from tools.outage_drill import daemon_logs, judge, read_log, verdict


def at(text):
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


LOG = """\
[2026-12-08 02:56:05.580663] [11503] [info]twisted: starting up.
[2026-12-08 02:56:13.130945] [11503] [error]accesshttp.server.AccessHTTP: accesshttp: \
matchengine: did not answer order.put_limit in time
a line of a traceback, which has no header
[2026-12-08 02:56:23.194776] [11503] [fatal]accesshttp.server.AccessHTTP: accesshttp: \
matchengine: failing for 10 s, 16 attempts: did not answer order.put_limit in time
[2026-12-08 02:56:51.912895] [11503] [warn]accesshttp.server.AccessHTTP: accesshttp: \
matchengine: working again after 38.8 s, 64 failed attempts
[2026-12-08 02:57:23.254265] [11503] [fatal]accesshttp.server.AccessHTTP: accesshttp: \
marketprice: failing for 10 s, 16 attempts: did not answer market.last in time
"""


class DrillTests(SynchronousTestCase):

    def setUp(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(LOG)
        self.lines = read_log(path)

    def test_read_log(self):
        """Each line with a header, its time, level and text; other lines left out; a log
        not written is no line."""
        self.assertEqual(len(self.lines), 5)
        self.assertEqual(self.lines[2][:2], (at("2026-12-08 02:56:23.194776"), "fatal"))
        self.assertTrue(self.lines[2][2].endswith("did not answer order.put_limit in time"))
        self.assertEqual(read_log(self.mktemp()), [])

    def test_judge_and_verdict(self):
        """An outage with one alert and its end line is no fault; an alert without an end
        line, two alerts, or an alert for a blip are."""
        first = judge(self.lines, at("2026-12-08 02:56:10.0"), at("2026-12-08 02:57:00.0"))
        self.assertEqual((len(first["alerts"]), len(first["errors"]), first["ended"]),
                         (1, 1, True))
        self.assertEqual(verdict("matchengine", {"accesshttp": first}), [])
        self.assertEqual(verdict("blip", {"accesshttp": first}),
                         ["accesshttp: an alert for a blip"])
        second = judge(self.lines, at("2026-12-08 02:57:00.0"), at("2026-12-08 02:58:00.0"))
        self.assertFalse(second["ended"])
        self.assertEqual(verdict("marketprice", {"accesshttp": second}),
                         ["accesshttp: no end line after its alert"])
        both = judge(self.lines, at("2026-12-08 02:56:00.0"), at("2026-12-08 02:58:00.0"))
        self.assertEqual(verdict("mysql", {"accesshttp": both}),
                         ["accesshttp: 2 alerts for one outage",
                          "accesshttp: no end line after its alert"])
        # the matchengine's log and history: two databases, one alert each
        self.assertEqual(verdict("mysql", {"matchengine": both}),
                         ["matchengine: no end line after its alert"])
        self.assertEqual(verdict("kafka", {"matchengine": both})[0],
                         "matchengine: 2 alerts for one outage")
        quiet = judge(self.lines, at("2026-12-08 02:55:00.0"), at("2026-12-08 02:56:10.0"))
        self.assertEqual(quiet, {"alerts": [], "errors": [], "ended": True})

    def test_daemon_logs(self):
        """A daemon's log, or its logs of each day; not another daemon's, nor its lock."""
        workdir = self.mktemp()
        os.makedirs(os.path.join(workdir, "log"))
        for name in ("alertcenter.20261208.log", "alertcenter.20261209.log", "accessws.log",
                     "matchengine.log", "matchengine.writer.lock", "accesshttp.log"):
            open(os.path.join(workdir, "log", name), "w").close()
        self.assertEqual([os.path.basename(p) for p in daemon_logs(workdir, "alertcenter")],
                         ["alertcenter.20261208.log", "alertcenter.20261209.log"])
        self.assertEqual([os.path.basename(p) for p in daemon_logs(workdir, "matchengine")],
                         ["matchengine.log"])
