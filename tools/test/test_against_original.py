"""The comparison tool's own parts: its request stream and how it compares answers."""

import decimal
import json

from twisted.trial.unittest import SynchronousTestCase

from tools.against_original import (AUTH_ANSWERS, REALS, SOURCE, WS_USER_QUERIES, Comparison,
                                    PushView, Requests, UserPushView, alert_items, far_number,
                                    mask_first_buckets, where_apart, ws_masked, ws_user_frames)
from utils.alert import MAGIC

MARKETS = ["BTCBCH", "LTCBCH"]


def stream(seed, count, **options):
    requests = Requests(seed, MARKETS, **options)
    return [requests.next() for _ in range(count)]


class RequestsTests(SynchronousTestCase):

    def test_seeded(self):
        """One seed gives one stream, which both daemons are sent."""
        self.assertEqual(stream(5, 500, bad_input=True), stream(5, 500, bad_input=True))
        self.assertNotEqual(stream(5, 500), stream(6, 500))

    def test_every_command(self):
        """Every command is sent, cancels and order details once orders rest."""
        requests, commands = Requests(1, MARKETS, bad_input=True), set()
        for n in range(3000):
            command, params = requests.next()
            commands.add(command)
            requests.learn(command, params, {"result": {"id": n, "left": "1"}})
        self.assertEqual(commands, {101, 102, 104, 105, 201, 202, 203, 204, 205, 206, 207,
                                    307, 308})

    def test_departures(self):
        """The inputs the two read differently on purpose are told apart."""
        departs = Requests.departs
        for command, params in [
                (102, [1, "BTC", "x", 1, "NaN", {}]), (102, [1, "BTC", "x", 1, "1e-101", {}]),
                (102, [1, "BTC", "x" * 31, 1, "1", {}]),
                (102, [1, "BTC", "x", 1, "1" * 15, {}]),
                (201, [1, "BTCBCH", 1, "1" * 35, "1", "0", "0", ""]),
                (201, [1, "BTCBCH", (1 << 32) + 1, "1", "1", "0", "0", ""]),
                (202, [1, "BTCBCH", (1 << 32) + 2, "1", "0", ""]),
                (205, ["BTCBCH", (1 << 32) + 1, 0, 10])]:
            self.assertTrue(departs(command, params), params)
        for command, params in [
                (102, [1, "BTC", "x" * 30, 1, "1" * 14, {}]),
                (102, [1, "BTC", "x", 1, "abc", {}]),
                (201, [1, "BTCBCH", 3, "1", "1e100", "0", "0", ""]),
                (201, [1, "BTCBCH", 1 << 32, "1", "1", "0", "0", ""]),
                (205, ["BTCBCH", 2, 0, 10])]:
            self.assertFalse(departs(command, params), params)
        self.assertIsNone(far_number("1.2.3"))
        # whatever context another caller left current (the engine's traps nothing)
        with decimal.localcontext(decimal.Context(traps=[])):
            self.assertIsNone(far_number("BTC"))
            self.assertFalse(departs(102, [1, "BTC", "x", 1, "1", {}]))

    def test_restartable(self):
        """With restarts, a change keeps at most 4 places (the fewest prec_show)."""
        requests = Requests(1, MARKETS, restarts=True)
        cut = [requests.restartable(102, [1, "BTC", "x", 1, change, {}])[4]
               for change in ("1.123456", "-5.00001", "7", "3.0", "0.")]
        self.assertEqual(cut, ["1.1234", "-5.0000", "7", "3.0", "0"])
        self.assertEqual(requests.restartable(201, [1, "BTCBCH", 1, "1.123456"])[3],
                         "1.123456")

    def test_learns_open_orders(self):
        requests = Requests(1, MARKETS)
        requests.learn(201, [3, "BTCBCH"], {"result": {"id": 9, "left": "1"}})
        requests.learn(201, [3, "BTCBCH"], {"result": {"id": 10, "left": "0"}})
        requests.learn(201, [3, "BTCBCH"], {"error": {"code": 10}, "result": None})
        self.assertEqual(requests.open_orders, [(3, "BTCBCH", 9)])


class ComparisonTests(SynchronousTestCase):

    def setUp(self):
        self.printed = []
        self.comparison = Comparison(self.printed.append)

    @property
    def found(self):
        return [what for what, _ in self.comparison.found]

    def compare(self, original, ours):
        self.comparison.compare(201, [], original, ours)

    def test_times_aside(self):
        self.compare(b'{"result": {"id": 1, "ctime": 1.5, "mtime": 2.25}}',
                     b'{"result": {"id": 1, "ctime": 1.625, "mtime": 3}}')
        self.assertEqual(self.found, [])

    def test_values(self):
        self.compare(b'{"result": {"left": "0e-8"}}', b'{"result": {"left": "0"}}')
        self.assertEqual(self.found, ["answer"])

    def test_text(self):
        """The same JSON in another key order or indentation is a difference of text."""
        self.compare(b'{"error": null, "result": 1}', b'{"result": 1, "error": null}')
        self.compare(b'{"error": null}', b'{\n    "error": null\n}')
        self.assertEqual(self.found, ["text", "text"])

    def test_closed(self):
        self.compare(None, None)
        self.compare(None, b'{"error": null}')
        self.assertEqual(self.found, ["answer"])
        self.assertEqual(self.comparison.counts, {(201, "closed"): 2})

    def test_summary_of_numbers_and_names(self):
        """Commands by number first, then the named checks."""
        lines = []
        comparison = Comparison(out=lines.append)
        comparison.counts = {("cli", "status"): 1, (201, None): 2, (101, 10): 1,
                             ("pushes", "round"): 3}
        self.assertEqual(comparison.summary(), 0)
        self.assertEqual(lines[1:], ["  101: 1 error 10", "  201: 2 result", "  cli: 1 status",
                                     "  pushes: 3 round", "0 differences"])

    def test_dropped_keys(self):
        """After a slice, "source" is left out, and so is the text's comparison."""
        self.comparison.drop = ("source",)
        self.compare(b'{"result": {"id": 1}}', b'{"result": {"id": 1, "source": ""}}')
        self.compare(b'{"result": {"id": 1}}', b'{"result": {"id": 2, "source": ""}}')
        self.assertEqual(self.found, ["answer"])
        self.assertEqual(self.comparison.summary(), 1)
        self.assertEqual(self.printed[-2:], ["  201: 2 result", "1 differences"])


class MessageTests(SynchronousTestCase):

    def test_times_masked(self):
        """A message's reals (its times) are masked; amounts, as strings, are not."""
        self.assertEqual(REALS.sub(b"T", b'[1796643671.5, "BTCBCH", 12, "1.5", 1e-05, 2.5e-05]'),
                         b'[T, "BTCBCH", 12, "1.5", 1e-05, T]')
        self.assertEqual(REALS.sub(b"T", b'{"ctime": 17.25, "left": "0.5"}'),
                         b'{"ctime": T, "left": "0.5"}')

    def test_source_taken_out(self):
        self.assertEqual(SOURCE.sub(b"", b'{"id": 1, "source": "a\\"b", "type": 1}'),
                         b'{"id": 1, "type": 1}')


class FirstBucketTests(SynchronousTestCase):

    def mask(self, command, params, result, first=1000):
        body = json.dumps({"error": None, "result": result, "id": 0}).encode()
        return json.loads(mask_first_buckets(command, params, body, first))["result"]

    def test_kline_rows(self):
        """Only the open and low of the row whose bucket holds the first deals are masked."""
        rows = [[900, "0", "5", "6", "0", "1", "5", "M"], [960, "5", "7", "7", "5", "1", "7", "M"],
                [1020, "7", "8", "8", "7", "1", "8", "M"]]
        masked = self.mask(302, ["M", 900, 1100, 60], rows)     # 960 holds 1000
        self.assertEqual(masked[1], [960, "masked", "7", "7", "masked", "1", "7", "M"])
        self.assertEqual([masked[0], masked[2]], [rows[0], rows[2]])

    def test_status(self):
        status = {"period": 10, "open": "0", "low": "0", "high": "9"}
        self.assertEqual(self.mask(301, ["M", 10], dict(status), first=0), status)
        self.assertEqual(self.mask(301, ["M", 10 ** 10], dict(status))["open"], "masked")
        self.assertEqual(self.mask(305, ["M"], dict(status))["low"], "masked")
        self.assertEqual(self.mask(301, ["M", "1"], None), None)
        self.assertIsNone(mask_first_buckets(301, ["M", 10], None, 0))


class WebsocketTests(SynchronousTestCase):

    def test_times_masked(self):
        self.assertEqual(
            ws_masked('{"result": 1795562197, "id": 2} [[1795561597, "1"]] {"time": 17.5}'),
            '{"result": 0, "id": 2} [[0, "1"]] {"time": 0}')

    def test_pushes_add_up(self):
        """Depth changes split over two pushes add up to what one push carried."""
        one, two = PushView(), PushView()
        one.push('{"method": "depth.update", "params": [true, {"asks": [["5", "1"]]}, "M"]}')
        one.push('{"method": "depth.update", "params": [false, {"asks": [["5", "0"], '
                 '["6", "2"]], "bids": [["4", "1"]]}, "M"]}')
        two.push('{"method": "depth.update", "params": [true, {"asks": [["5", "1"]]}, "M"]}')
        two.push('{"method": "depth.update", "params": [false, {"asks": [["5", "0"]]}, "M"]}')
        two.push('{"method": "depth.update", "params": [false, {"asks": [["6", "2"]], '
                 '"bids": [["4", "1"]]}, "M"]}')
        self.assertEqual(one.state(), two.state())
        self.assertEqual(one.state()["depth"], {"asks": {"6": "2"}, "bids": {"4": "1"}})
        two.push('{"method": "price.update", "params": ["M", "5"]}')
        self.assertNotEqual(one.state(), two.state())

    def test_deals_and_replies(self):
        view = PushView()
        view.push('{"method": "deals.update", "params": ["M", [{"id": 2}, {"id": 1}]]}')
        view.push('{"error": null, "result": {"status": "success"}, "id": 100}')
        self.assertEqual(view.state()["deals"], [{"id": 1}, {"id": 2}])
        self.assertEqual(len(view.state()["replies"]), 1)

    def test_user_pushes(self):
        """Every order.update counts, in order; of the balances, how many pushes each asset
        had and the last."""
        one, two = UserPushView(), UserPushView()
        for view, balances in ((one, ("1", "2")), (two, ("1.5", "2"))):
            view.push('{"method": "order.update", "params": [1, {"id": 5}], "id": null}')
            for available in balances:
                view.push('{"method": "asset.update", "params": [{"BTC": {"available": "%s"}}]'
                          ', "id": null}' % available)
        one.push('{"method": "state.update", "params": ["M", {}], "id": null}')
        self.assertEqual(one.state(), two.state())
        self.assertEqual(one.state()["assets"], {"BTC": (2, {"available": "2"})})
        two.push('{"method": "asset.update", "params": [{"BTC": {"available": "2"}}]}')
        self.assertNotEqual(one.state(), two.state())
        one.push('{"method": "order.update", "params": [3, {"id": 5}], "id": null}')
        self.assertEqual(one.state()["orders"], [[1, {"id": 5}], [3, {"id": 5}]])

    def test_user_frames(self):
        """Seeded; every token of the auth service, both logins and every user method,
        valid and spoiled, are sent."""
        frames = list(ws_user_frames(3, 2000))
        self.assertEqual(frames, list(ws_user_frames(3, 2000)))
        requests = [json.loads(frame) for _, frame in frames]
        methods = {r["method"] for r in requests}
        self.assertEqual(methods, {"server.auth", "server.sign"} | set(WS_USER_QUERIES))
        auth = [r["params"] for r in requests if r["method"] == "server.auth"]
        tokens = {p[0] for p in auth if len(p) == 2 and type(p[1]) is str}
        self.assertLessEqual(set(AUTH_ANSWERS) | {"slow"}, tokens)
        self.assertTrue(any(len(p) != 2 for p in auth))
        signs = [r["params"] for r in requests if r["method"] == "server.sign"]
        self.assertTrue(any(len(p) == 3 and p[2] == 0 for p in signs))
        self.assertIn("a b/\u00e9&=?", {p[0] for p in signs})


class AlertTests(SynchronousTestCase):

    def test_items(self):
        """Seeded; datagrams of one line or two, TCP streams cut in pieces, with lines that
        are not alerts, too long or without their newline."""
        items = list(alert_items(4, 1000))
        self.assertEqual(items, list(alert_items(4, 1000)))
        datagrams = [chunks for transport, chunks in items if transport == "udp"]
        streams = [b"".join(chunks) for transport, chunks in items if transport == "tcp"]
        self.assertTrue(all(len(chunks) == 1 for chunks in datagrams))
        self.assertTrue(any(d[0].count(b"\n") == 2 for d in datagrams))
        self.assertTrue(any(not d[0].startswith(MAGIC) for d in datagrams))
        self.assertTrue(any(len(chunks) == 3 for t, chunks in items if t == "tcp"))
        self.assertTrue(any(len(s) > 10240 for s in streams))
        self.assertTrue(any(not s.endswith(b"\n") for s in streams))
        self.assertTrue(any(b"\r\n" in s for s in streams))
        # no datagram without its newline: the original reads one as a line of no length
        self.assertTrue(all(d[0].endswith(b"\n") for d in datagrams))


class WhereApartTests(SynchronousTestCase):

    def test_first_difference(self):
        self.assertEqual(where_apart({"a": [1, {"x": 3}]}, {"a": [1, {"x": 4}]}),
                         ("['a'][1]['x']: 3", "['a'][1]['x']: 4"))
        self.assertEqual(where_apart([1, 2], [1, 2, 5]), ("[2:]: []", "[2:]: [5]"))
        self.assertEqual(where_apart({"a": 1}, {}), ("['a']: 1", "['a']: '(none)'"))
