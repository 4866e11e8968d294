# -*- test-case-name: matchengine.test.test_cli -*-
"""matchengine's administration CLI: status, balance, market, makeslice."""

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from matchengine import server
from matchengine.market import ASK, BID
from network.address import listen
from utils import forked
from utils.cli import CLIFactory
from utils.daemon import give_up
from utils.decimals import to_raw

log = Logger()

# seconds makeslice waits for its slice to start before it answers OK all the same
SLICE_ANSWER_WAIT = 1.0


def user_id_of(text):
    """A user id read as the original reads it (`strtoul(text, NULL, 0)` kept to 32 bits):
    the longest number at the start, decimal, octal after a 0 or hexadecimal after 0x, a
    minus sign wrapping around; no number at all is 0."""
    text = text.lstrip(" \t\n\r\f\v")
    negative = text[:1] == "-"
    if text[:1] in "+-":
        text = text[1:]
    if text[:2].lower() == "0x" and text[2:3].lower() in "0123456789abcdef" and text[2:3]:
        base, text = 16, text[2:]
    elif text[:1] == "0":
        base = 8
    else:
        base = 10
    digits = "0123456789abcdef"[:base]
    end = 0
    while end < len(text) and text[end].lower() in digits:
        end += 1
    value = int(text[:end], base) if end else 0
    if value >= 1 << 64:
        return 0xFFFFFFFF       # ULONG_MAX, kept to 32 bits
    return (-value if negative else value) & 0xFFFFFFFF


def commands(me):
    """The CLI commands over a MatchEngine service."""

    def status(args):
        return me.status_lines()

    def every_entry(compute):
        """The text of a command that visits every balance entry: made in a forked child
        when there are many (see MatchEngine.asset_summary)."""
        me.engine.use_context()     # the sums are the engine's
        if me.engine.balances.count() < server.FORK_SUMMARY_ENTRIES:
            return compute()
        return forked.in_child(compute, me.reactor)

    def balance(args):
        b = me.engine.balances
        kinds = {1: "available", 2: "freeze"}
        # as the original: arguments past those a command reads are not looked at
        if args[:1] == ["list"]:
            def listing():
                lines = ["%-10s %-16s %-10s %s\n" % ("user", "asset", "type", "amount")]
                for user_id, asset, kind, value in b.iter_entries():
                    if len(args) == 2 and asset != args[1]:
                        continue
                    lines.append("%-10d %-16s %-10s %s\n" % (user_id, asset, kinds[kind],
                                                             to_raw(value)))
                return "".join(lines)
            return every_entry(listing)
        if args[:1] == ["get"]:
            if len(args) != 2:
                return "usage: balance get user_id\n"
            user_id = user_id_of(args[1])
            lines = ["%-10s %-16s %-10s %s\n" % ("user", "asset", "type", "amount")]
            for asset in me.engine.assets:
                for kind in (1, 2):
                    if b.has(user_id, kind, asset):
                        lines.append("%-10d %-16s %-10s %s\n" % (
                            user_id, asset, kinds[kind], to_raw(b.get(user_id, kind, asset))))
            return "".join(lines)
        if args[:1] == ["summary"]:
            def summary():
                lines = ["%-16s %-30s %-10s %-30s %-10s %-30s\n" % (
                    "asset", "total", "available", "available", "freeze", "freeze")]
                summaries = b.summaries(me.engine.assets)
                for asset in me.engine.assets:
                    total, a_count, a_sum, f_count, f_sum = summaries[asset]
                    lines.append("%-16s %-30s %-10d %-30s %-10d %-30s\n" % (
                        asset, to_raw(total), a_count, to_raw(a_sum), f_count, to_raw(f_sum)))
                return "".join(lines)
            return every_entry(summary)
        return "usage: balance list/get/summary\n"

    def market(args):
        if args[:1] != ["summary"]:
            return "usage market summary\n"
        lines = ["%-10s %-10s %-20s %-10s %-20s\n" % (
            "market", "ask count", "ask amount", "bid count", "bid amount")]
        for m in me.engine.markets.values():
            ask_count, ask_amount = m.side_summary(ASK)
            bid_count, bid_amount = m.side_summary(BID)
            lines.append("%-10s %-10d %-20s %-10d %-20s\n" % (
                m.name, ask_count, to_raw(ask_amount), bid_count, to_raw(bid_amount)))
        return "".join(lines)

    def makeslice(args):
        # as the original: OK once the slice is being written, or after SLICE_ANSWER_WAIT
        # while the operation log waits for its database first; how it ends is logged
        started, answer = defer.Deferred(), defer.Deferred()

        def answered(result):
            if not answer.called:
                call.cancel()
                answer.callback(result)
        call = me.reactor.callLater(SLICE_ANSWER_WAIT, answer.callback, "OK\n")
        started.addCallbacks(lambda ts: answered("OK\n"), answered)
        me.make_slice(started=started)
        return answer

    return {"status": status, "balance": balance, "market": market, "makeslice": makeslice}


class CLIService(service.Service):
    """Listens on the `cli` address once the engine is ready."""

    def __init__(self, engine, address, reactor):
        self.engine = engine
        self.address = address
        self.reactor = reactor
        self.port = None

    def startService(self):
        service.Service.startService(self)

        def start(_):
            return listen(self.reactor, self.address, CLIFactory(commands(self.engine)))

        def listening(port):
            self.port = port

        def failed(failure):
            give_up(self.reactor, log, "matchengine cli could not listen", failure)

        ready = self.engine.when_ready()
        # a failure to start is the engine's own to report
        ready.addCallbacks(start, lambda failure: None).addCallbacks(listening, failed)

    def stopService(self):
        service.Service.stopService(self)
        if self.port is not None:
            return defer.maybeDeferred(self.port.stopListening)
