# -*- test-case-name: matchengine.test.test_cli -*-
"""The matchengine CLI commands, the twistd options and the config checks."""

import json
import os

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from matchengine import cli, config, server, tap
from matchengine.effects import TOPIC_BALANCES, TOPIC_DEALS, TOPIC_ORDERS
from matchengine.history import HistoryWriter
from matchengine.operlog import OperationLog
from matchengine.outbox import LocalOutbox, WriterOutbox
from matchengine.server import MatchEngine
from matchengine.test.test_server import engine_config
from utils import forked
from utils.config import ConfigError
from utils.testing import until


def memory_service():
    cfg = engine_config(7316, "127.0.0.1:9092", "log", "history")
    assets, markets = config.build_tables(cfg)
    clock = Clock()
    service = MatchEngine(cfg, assets, markets, None,
                          LocalOutbox(HistoryWriter(None, clock), None), reactor=clock,
                          listen=False)
    service.operlog = OperationLog(None, clock)
    return service


class CLITests(SynchronousTestCase):

    def setUp(self):
        self.service = memory_service()
        e = self.service.engine
        e.execute(102, [5, "BTC", "deposit", 1, "2", {}], 1.0)
        e.execute(201, [5, "BTCBCH", 1, "0.5", "100", "0", "0", ""], 2.0)
        self.commands = cli.commands(self.service)

    def test_status(self):
        """status reports the ids and backlogs, one per line, the messages by topic."""
        outbox = self.service.outbox = WriterOutbox(Clock(), {}, None)
        outbox.add([], [(TOPIC_DEALS, "[]"), (TOPIC_ORDERS, "{}"), (TOPIC_ORDERS, "{}")], 1)
        outbox.send_now()
        outbox.add([(None, 0, ())], [(TOPIC_BALANCES, "[]")], 2)
        lines = ["order last ID: 1", "deals last ID: 0", "operlog last ID: 0",
                 "operlog pending: 0", "history pending 1", "message deals pending: 1",
                 "message orders pending: 2", "message balances pending: 1"]
        self.assertEqual(self.commands["status"]([]), "".join(x + "\n" for x in lines))
        outbox._acked(1)
        self.assertEqual(self.commands["status"]([]).splitlines()[-3:],
                         ["message deals pending: 0", "message orders pending: 0",
                          "message balances pending: 1"])

    def test_balance(self):
        """balance list/get/summary in the original's columns; usage on bad arguments."""
        self.assertEqual(self.commands["balance"](["get", "5"]).splitlines(), [
            "user       asset            type       amount",
            "5          BTC              available  1.500000000000",
            "5          BTC              freeze     0.500000000000"])
        self.assertEqual(len(self.commands["balance"](["list"]).splitlines()), 3)
        self.assertEqual(len(self.commands["balance"](["list", "BCH"]).splitlines()), 1)
        summary = self.commands["balance"](["summary"]).splitlines()
        self.assertTrue(summary[2].startswith("BTC              2.000000000000"))
        self.assertEqual(self.commands["balance"](["get"]), "usage: balance get user_id\n")
        self.assertEqual(self.commands["balance"]([]), "usage: balance list/get/summary\n")
        # arguments read as the original reads them: strtoul's user ids, extra ones ignored
        self.assertEqual(self.commands["balance"](["get", "0x5"]),
                         self.commands["balance"](["get", "5"]))
        self.assertEqual(self.commands["balance"](["get", "05x"]),
                         self.commands["balance"](["get", "5"]))
        self.assertEqual(len(self.commands["balance"](["get", "abc"]).splitlines()), 1)
        self.assertEqual(len(self.commands["balance"](["list", "BCH", "x"]).splitlines()), 3)
        self.assertEqual(self.commands["balance"](["summary", "x"]).splitlines(), summary)

    def test_user_ids(self):
        """User ids as strtoul(text, NULL, 0) reads them, kept to 32 bits."""
        for text, expected in [("5", 5), ("010", 8), ("0x1F", 31), ("0X1f", 31), ("12abc", 12),
                               ("abc", 0), ("", 0), ("  7", 7), ("+9", 9), ("-1", 0xFFFFFFFF),
                               ("4294967296", 0), ("4294967297", 1), ("0x", 0), ("09", 0),
                               ("99999999999999999999999", 0xFFFFFFFF)]:
            self.assertEqual(cli.user_id_of(text), expected, text)

    def test_market(self):
        """market summary counts the resting ask."""
        lines = self.commands["market"](["summary"]).splitlines()
        self.assertEqual(lines[1].split(), ["BTCBCH", "1", "0.50000000", "0", "0"])
        self.assertEqual(self.commands["market"]([]), "usage market summary\n")
        self.assertEqual(self.commands["market"](["summary", "x"]).splitlines(), lines)


class TapTests(SynchronousTestCase):

    def test_shipped_config(self):
        """The shipped config loads: the original's eight assets and seven markets."""
        options = tap.Options()
        options.parseOptions([])
        assets, markets = options["tables"]
        self.assertEqual(list(assets)[:2], ["BCH", "BTC"])
        self.assertEqual(len(markets), 7)
        self.assertEqual(options["loaded"].svr.bind[0], "tcp@127.0.0.1:7316")

    def test_bad_config_names_key(self):
        """A config error is a usage error naming the file and key."""
        path = self.mktemp()
        with open(tap.DEFAULT_CONFIG) as f:
            data = json.load(f)
        data["markets"][0]["stock"]["prec"] = 20
        with open(path, "w") as f:
            json.dump(data, f)
        options = tap.Options()
        e = self.assertRaises(usage.UsageError, options.parseOptions, ["--config", path])
        self.assertIn("markets[0]", str(e))
        del data["db_log"]
        with open(path, "w") as f:
            json.dump(data, f)
        e = self.assertRaises(usage.UsageError, options.parseOptions, ["--config", path])
        self.assertIn("db_log", str(e))

    def test_unknown_asset(self):
        """A market on an unknown asset is refused at start, naming the file and key."""
        cfg = json.load(open(tap.DEFAULT_CONFIG))
        cfg["markets"][0]["money"]["name"] = "XYZ"
        e = self.assertRaises(ConfigError, config.build_tables, config.load_data(cfg))
        self.assertIn("markets[0].money.name", str(e))
        # at start, with the file
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            json.dump(cfg, f)
        e = self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--config", path])
        self.assertIn("%s: markets[0].money.name: unknown asset" % path, str(e))

    def test_make_service(self):
        """makeService builds the log, engine and CLI services."""
        options = tap.Options()
        options.parseOptions([])
        top = tap.makeService(options, reactor=Clock())
        top.log_setup.remove()
        names = [type(s).__name__ for s in top]
        self.assertEqual(names, ["_LogService", "MatchEngine", "CLIService"])


class Request:
    """Collects what the service answers to one RPC request."""

    def __init__(self, answers):
        self.answers = answers

    def reply_result(self, result, debug):
        self.answers.append((self, result))

    def reply_error(self, error, debug):
        self.answers.append((self, error))


class ForkedReadTests(TestCase):

    def test_many_entries_answered_from_a_child(self):
        """With many balance entries, balance list and summary are made in a forked child,
        to the same text."""
        service = memory_service()
        service.reactor = reactor
        service.engine.execute(102, [5, "BTC", "deposit", 1, "2", {}], 1.0)
        commands = cli.commands(service)
        inline = {args: commands["balance"](list(args)) for args in (("list",), ("summary",))}
        self.patch(server, "FORK_SUMMARY_ENTRIES", 0)

        def check(texts):
            self.assertEqual(dict(zip(inline, texts)), inline)
        return defer.gatherResults([commands["balance"](list(args)) for args in inline]) \
            .addCallback(check)

    async def summaries(self):
        service = memory_service()
        service.reactor = reactor
        e = service.engine
        e.execute(102, [5, "BTC", "deposit", 1, "2", {}], 1.0)
        e.execute(102, [6, "BCH", "deposit", 1, "3", {}], 1.0)
        inline = {"btc": e.asset_summary(["BTC"], 2.0, True),
                  "all": e.asset_summary([], 2.0, True)}
        self.patch(server, "FORK_SUMMARY_ENTRIES", 0)
        forks = []
        real_in_child = forked.in_child

        def counted(compute, *rest):
            # this engine's children only: a service another test left may fork meanwhile
            if any(cell.cell_contents is e for cell in compute.__closure__ or ()):
                forks.append(compute)
            return real_in_child(compute, *rest)
        self.patch(forked, "in_child", counted)
        answers = []
        requests = {key: Request(answers) for key in ("btc", "all", "btc later", "bad")}
        service._asset_summary(["BTC"], requests["btc"])
        # these arrive while the first child runs: they share the second
        service._asset_summary([], requests["all"])
        service._asset_summary(["BTC"], requests["btc later"])
        service._asset_summary(["NOPE"], requests["bad"])
        await until(lambda: len(answers) == 4, what="four answers")
        got = {key: result for request, result in answers
               for key, r in requests.items() if r is request}
        self.assertEqual(got["btc"], inline["btc"])
        self.assertEqual(got["all"], inline["all"])
        self.assertEqual(got["btc later"], inline["btc"])
        self.assertEqual(got["bad"].code, 1)
        self.assertEqual(len(forks), 2)
        self.assertFalse(service._summary_running)

    def test_asset_summaries_share_a_child(self):
        """asset.summary from a forked child answers what the engine would; one child runs
        at a time, and the requests that came meanwhile share the next."""
        return defer.Deferred.fromCoroutine(self.summaries())
