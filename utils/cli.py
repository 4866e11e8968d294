# -*- test-case-name: utils.test.test_cli -*-
"""The line-based administration CLI (telnet/nc style), as the original's matchengine offers.

A request is one line ending in `\\n`, split into arguments the way Redis splits its inline
commands (`split_args`).  The first argument names the command; the handler receives the
remaining arguments and returns the reply text (or a Deferred firing with it), written back
as is.  `help` lists the commands; an unknown command answers `command not found\\n`; empty
lines, lines with unbalanced quotes and empty replies send nothing.  A line longer than
4096 bytes closes the connection.
"""

from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Union

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["MAX_LINE", "split_args", "CLIProtocol", "CLIFactory"]

MAX_LINE = 4096

_SPACE = b" \t\n\v\f\r"           # skipped between arguments (C isspace)
_TOKEN_END = b" \n\r\t"           # ends an unquoted argument
_HEX = b"0123456789abcdefABCDEF"
_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b",
            ord("a"): b"\a"}


def _decode(arg: bytes) -> str:
    return arg.decode("utf-8", "surrogateescape")


def split_args(line: Union[bytes, str]) -> Optional[List[str]]:
    """Split a command line into arguments; None when quotes are unbalanced or misplaced.

    Arguments are separated by whitespace.  Inside double quotes `\\n \\r \\t \\b \\a`,
    `\\xHH` and backslash before any other character are escapes; inside single quotes only
    `\\'` is.  A closing quote must be followed by whitespace or the end of the line.  The
    line ends at its first NUL byte.  Bytes that are not UTF-8 are kept as surrogate escapes.
    """
    data = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else bytes(line)
    nul = data.find(b"\0")
    if nul >= 0:
        data = data[:nul]
    size = len(data)
    args: List[str] = []
    i = 0
    while True:
        while i < size and data[i] in _SPACE:
            i += 1
        if i >= size:
            return args
        current = bytearray()
        in_double = in_single = False
        while True:
            c = data[i] if i < size else 0
            if in_double:
                if (c == 0x5C and i + 3 < size and data[i + 1] == 0x78
                        and data[i + 2] in _HEX and data[i + 3] in _HEX):
                    current.append(int(data[i + 2:i + 4], 16))
                    i += 3
                elif c == 0x5C and i + 1 < size:
                    i += 1
                    current += _ESCAPES.get(data[i], data[i:i + 1])
                elif c == 0x22:
                    if i + 1 < size and data[i + 1] not in _SPACE:
                        return None
                    i += 1
                    break
                elif i >= size:
                    return None
                else:
                    current.append(c)
            elif in_single:
                if c == 0x5C and i + 1 < size and data[i + 1] == 0x27:
                    i += 1
                    current.append(0x27)
                elif c == 0x27:
                    if i + 1 < size and data[i + 1] not in _SPACE:
                        return None
                    i += 1
                    break
                elif i >= size:
                    return None
                else:
                    current.append(c)
            else:
                if i >= size or c in _TOKEN_END:
                    if i < size:
                        i += 1
                    break
                if c == 0x22:
                    in_double = True
                elif c == 0x27:
                    in_single = True
                else:
                    current.append(c)
            i += 1
        args.append(_decode(bytes(current)))


Handler = Callable[[List[str]], Any]


@implementer(IHalfCloseableProtocol)
class CLIProtocol(Protocol):
    """One CLI connection: frames lines, dispatches them in order, writes the replies.  A
    peer that shuts its side down after its lines still gets their replies."""

    log = Logger()

    def __init__(self, commands: Optional[Mapping[str, Handler]] = None) -> None:
        self.commands = commands
        self._buffer = b""
        self._queue: Deque[bytes] = deque()
        self._busy = False
        self._closed = False
        self._read_closed = False

    def connectionMade(self) -> None:
        if self.commands is None:
            self.commands = getattr(self.factory, "commands", {})

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._closed = True
        self._queue.clear()

    def readConnectionLost(self) -> None:
        self._read_closed = True
        self._run()

    def writeConnectionLost(self) -> None:
        """Never called: this side does not shut its writing down alone."""

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) >= MAX_LINE:
                    self._too_long()
                return
            if end + 1 > MAX_LINE:
                self._too_long()
                return
            line, self._buffer = self._buffer[:end + 1], self._buffer[end + 1:]
            self._queue.append(line)
            self._run()
            if self._closed:
                return

    def _too_long(self) -> None:
        self.log.warn("cli peer {peer}: line longer than {limit} bytes, closing",
                      peer=self._peer(), limit=MAX_LINE)
        self._buffer = b""
        self._closed = True
        self._queue.clear()
        self.transport.loseConnection()

    def _peer(self) -> str:
        try:
            return str(self.transport.getPeer())
        except Exception:
            return "?"

    def _run(self) -> None:
        while self._queue and not self._busy and not self._closed:
            reply = self._dispatch(self._queue.popleft())
            if isinstance(reply, defer.Deferred):
                self._busy = True
                reply.addErrback(self._failed)
                reply.addCallback(self._deferred_reply)
                return
            self._write(reply)
        if self._read_closed and not self._busy and not self._closed:
            # every line answered: close after the replies
            self._closed = True
            self.transport.loseConnection()

    def _deferred_reply(self, reply: Any) -> None:
        self._busy = False
        self._write(reply)
        self._run()

    def _dispatch(self, line: bytes) -> Any:
        args = split_args(line)
        if not args:
            return None
        name, rest = args[0], args[1:]
        if name == "help":
            return "".join(command + "\n" for command in self.commands)
        handler = self.commands.get(name)
        if handler is None:
            return "command not found\n"
        try:
            result = handler(rest)
        except Exception:
            return self._failed(Failure(), name)
        return result

    def _failed(self, failure: Failure, name: str = "") -> str:
        self.log.failure("cli command {name!r} failed", failure, name=name)
        return "internal error\n"

    def _write(self, reply: Any) -> None:
        if self._closed or not reply:
            return
        if not isinstance(reply, bytes):
            reply = str(reply).encode("utf-8", "surrogateescape")
        self.transport.write(reply)


class CLIFactory(Factory):
    """Builds CLIProtocol instances sharing one command table (name -> handler(args))."""

    protocol = CLIProtocol

    def __init__(self, commands: Dict[str, Handler]) -> None:
        for name in commands:
            if not name or name == "help":
                raise ValueError("invalid cli command name {!r}".format(name))
        self.commands = commands

    def buildProtocol(self, addr: Any) -> CLIProtocol:
        protocol = CLIProtocol(self.commands)
        protocol.factory = self
        return protocol
