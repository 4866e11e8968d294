"""Tests for utils.cli: Redis-style argument splitting and the line protocol."""

from hypothesis import given, strategies as st
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from utils.cli import MAX_LINE, CLIFactory, split_args


def quote(arg: bytes) -> str:
    """Quote bytes the way a client would for split_args (double quotes, escapes)."""
    out = ['"']
    for byte in arg:
        char = chr(byte)
        if char in '\\"':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append("\\x{:02x}".format(byte))
    out.append('"')
    return "".join(out)


class SplitArgsTests(SynchronousTestCase):

    def test_plain_words(self):
        """Whitespace separates arguments; runs of it and line ends are skipped."""
        self.assertEqual(split_args("  balance   list\tBTC \r\n"), ["balance", "list", "BTC"])
        self.assertEqual(split_args(b"\n"), [])
        self.assertEqual(split_args(""), [])

    def test_double_quotes(self):
        """Double quotes group words and understand C escapes and \\xHH."""
        self.assertEqual(split_args('set "a b" "\\n\\r\\t\\b\\a\\\\\\"" "\\x41\\x4a"'),
                         ["set", "a b", "\n\r\t\b\a\\\"", "AJ"])
        self.assertEqual(split_args('"\\x4" "\\q"'), ["x4", "q"])
        self.assertEqual(split_args('""'), [""])

    def test_single_quotes(self):
        """Single quotes only unescape \\'."""
        self.assertEqual(split_args("'it\\'s' 'a\\nb' 'x\"y'"), ["it's", "a\\nb", 'x"y'])

    def test_quote_inside_word(self):
        """A quote may start inside a word: foo"bar baz" is one argument."""
        self.assertEqual(split_args('foo"bar baz" x'), ["foobar baz", "x"])

    def test_errors(self):
        """Unbalanced quotes or text glued after a closing quote give None."""
        for line in ['"unterminated', "'unterminated", '"foo"bar', "'foo'bar", '"a\\"',
                     "set \"x\"y\n"]:
            self.assertIsNone(split_args(line), line)

    def test_closing_quote_before_whitespace(self):
        """Any whitespace (or the end) may follow a closing quote."""
        self.assertEqual(split_args('"a"\t"b"\n'), ["a", "b"])
        self.assertEqual(split_args('"a"\x0b"b"'), ["a", "b"])

    def test_nul_ends_line(self):
        """The line ends at its first NUL byte."""
        self.assertEqual(split_args(b"a b\0c d"), ["a", "b"])

    def test_non_utf8_bytes(self):
        """Bytes that are not UTF-8 survive as surrogate escapes."""
        args = split_args(b'"\\xff" \xc3\xa9')
        self.assertEqual(args, ["\udcff", "\u00e9"])
        self.assertEqual(args[0].encode("utf-8", "surrogateescape"), b"\xff")

    @given(st.lists(st.binary(max_size=20).filter(lambda b: b"\0" not in b), max_size=6))
    def test_quoted_round_trip(self, args):
        """Any arguments quoted with escapes split back to themselves."""
        line = " ".join(quote(arg) for arg in args) + "\n"
        self.assertEqual([a.encode("utf-8", "surrogateescape") for a in split_args(line)],
                         args)


class ProtocolTests(SynchronousTestCase):

    def setUp(self):
        self.calls = []
        self.pending = []

        def echo(args):
            self.calls.append(args)
            return " ".join(args) + "\n"

        def later(args):
            d = defer.Deferred()
            self.pending.append(d)
            return d

        def crash(args):
            raise RuntimeError("boom")

        commands = {"echo": echo, "later": later, "quiet": lambda args: "", "crash": crash,
                    "none": lambda args: None}
        self.factory = CLIFactory(commands)
        self.protocol = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, data):
        self.protocol.dataReceived(data)
        value = self.transport.value()
        self.transport.clear()
        return value

    def test_dispatch(self):
        """The handler gets the arguments after the command name; its reply is sent as is."""
        self.assertEqual(self.send(b'echo a "b c"\n'), b"a b c\n")
        self.assertEqual(self.calls, [["a", "b c"]])

    def test_help(self):
        """help lists every command, one per line."""
        self.assertEqual(self.send(b"help\n"), b"echo\nlater\nquiet\ncrash\nnone\n")

    def test_unknown_and_case(self):
        """Unknown (and differently cased) commands answer 'command not found'."""
        self.assertEqual(self.send(b"nope\n"), b"command not found\n")
        self.assertEqual(self.send(b"ECHO x\n"), b"command not found\n")

    def test_silent_lines(self):
        """Empty lines, unbalanced quotes and empty replies send nothing."""
        self.assertEqual(self.send(b"\n   \n"), b"")
        self.assertEqual(self.send(b'echo "x\n'), b"")
        self.assertEqual(self.send(b"quiet\nnone\n"), b"")
        self.assertEqual(self.calls, [])
        self.assertFalse(self.transport.disconnecting)

    def test_framing(self):
        """Lines may arrive in pieces or several at once; CRLF works."""
        self.assertEqual(self.send(b"ec"), b"")
        self.assertEqual(self.send(b"ho 1\r\necho 2\necho"), b"1\n2\n")
        self.assertEqual(self.send(b" 3\n"), b"3\n")

    def test_deferred_replies_keep_order(self):
        """A Deferred reply is written when it fires, and later lines wait for it."""
        self.assertEqual(self.send(b"later\necho after\n"), b"")
        self.pending[0].callback("first\n")
        self.assertEqual(self.transport.value(), b"first\nafter\n")

    def test_deferred_failure(self):
        """A failed Deferred answers 'internal error' and the failure is logged."""
        self.send(b"later\n")
        self.pending[0].errback(RuntimeError("backend"))
        self.assertEqual(self.transport.value(), b"internal error\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_handler_exception(self):
        """A raising handler answers 'internal error' and the connection stays usable."""
        self.assertEqual(self.send(b"crash\necho ok\n"), b"internal error\nok\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_long_line_closes(self):
        """4096 bytes without a newline close the connection."""
        self.send(b"echo " + b"x" * (MAX_LINE - 6) + b"\n")
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.send(b"x" * (MAX_LINE - 1)), b"")
        self.assertFalse(self.transport.disconnecting)
        self.send(b"x")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.send(b"\necho late\n"), b"")

    def test_long_complete_line_closes(self):
        """A line longer than 4096 bytes, even with its newline, closes the connection."""
        self.assertEqual(self.send(b"echo " + b"x" * MAX_LINE + b"\necho no\n"), b"")
        self.assertTrue(self.transport.disconnecting)

    def test_replies_after_the_peer_shut_its_side(self):
        """A peer that shuts its writing down after its lines gets their replies, a late
        one included, then the connection closes; a line left without its newline gets
        nothing."""
        self.assertEqual(self.send(b"later\necho after\necho cut"), b"")
        self.protocol.readConnectionLost()
        self.assertFalse(self.transport.disconnecting)
        self.pending[0].callback("first\n")
        self.assertEqual(self.transport.value(), b"first\nafter\n")
        self.assertTrue(self.transport.disconnecting)

    def test_lost_connection_drops_pending_reply(self):
        """A reply that fires after the connection closed is not written."""
        self.send(b"later\n")
        self.protocol.connectionLost(None)
        self.pending[0].callback("late\n")
        self.assertEqual(self.transport.value(), b"")

    def test_reserved_names(self):
        """help cannot be registered and names must not be empty."""
        self.assertRaises(ValueError, CLIFactory, {"help": lambda args: ""})
        self.assertRaises(ValueError, CLIFactory, {"": lambda args: ""})
