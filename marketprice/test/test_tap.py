# -*- test-case-name: marketprice.test.test_tap -*-
"""How marketprice asks accesshttp for the markets, against a real HTTP server on loopback."""

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from twisted.web.client import HTTPConnectionPool

from marketprice.tap import market_list_from


class Answers(resource.Resource):
    """Answers each POST with the next (status, body) of `answers`."""

    isLeaf = True

    def __init__(self, answers):
        super().__init__()
        self.answers = list(answers)

    def render_POST(self, request):
        status, body = self.answers.pop(0)
        request.setResponseCode(status)
        return body


class MarketListTests(TestCase):

    timeout = 30

    def ask(self, *answers):
        """The outcome of a market.list asked of a server giving `answers` in turn: the
        names, or the text of each error."""
        port = reactor.listenTCP(0, server.Site(Answers(answers)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        market_list = market_list_from("http://127.0.0.1:%d/" % port.getHost().port, reactor,
                                       pool=HTTPConnectionPool(reactor, persistent=False))

        async def outcomes():
            got = []
            for _ in answers:
                try:
                    got.append(await market_list())
                except ValueError as e:
                    got.append(str(e))
            return got
        return defer.Deferred.fromCoroutine(outcomes())

    async def outcomes_scenario(self):
        got = await self.ask(
            (500, b""),
            (502, b"<html>bad gateway</html>"),
            (200, b"<html>"),
            (200, b'{"error": {"code": 2, "message": "internal error"}, "result": null, '
                  b'"id": 1}'),
            (200, b'[1]'),
            (200, b'{"error": null, "result": [{"name": "BTCBCH"}, {"name": "LTCBCH"}], '
                  b'"id": 1}'))
        self.assertEqual(got, [
            "HTTP status 500, empty body",
            "HTTP status 502, body b'<html>bad gateway</html>'",
            "an answer that is not JSON: b'<html>'",
            "market.list answered {'error': {'code': 2, 'message': 'internal error'}, "
            "'result': None, 'id': 1}",
            "market.list answered [1]",
            ["BTCBCH", "LTCBCH"]])

    def test_answers(self):
        """The market names of a good answer; for any other, an error that says what came
        (accesshttp answers HTTP 500 with an empty body while its matchengine is not
        connected, which read as JSON was 'Expecting value: line 1 column 1')."""
        return defer.Deferred.fromCoroutine(self.outcomes_scenario())
