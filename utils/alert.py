# -*- test-case-name: utils.test.test_alert -*-
"""Alerts to alertcenter: one UDP datagram per message, and the FATAL-log forwarding.

Datagram: the 20-character magic `373d26968a5a2b698045`, the host label, `": "`, the message
(line breaks turned into spaces) and a newline, cut to 10240 bytes.  Nothing is acknowledged
or retried; a send error is logged once (until a send succeeds again) and never raised.

`AlertLogObserver` is a twisted.logger observer that sends every fatal (critical) event as
`[fatal]<source>: <text>`, the way the original alerted on each FATAL log line (but
Twisted's own note that a log observer failed).
"""

from typing import Any, Callable, Dict, Optional, Tuple, Union

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import ILogObserver, Logger
from twisted.python import threadable
from zope.interface import implementer

from utils.log import event_level, event_source, event_text

__all__ = ["MAGIC", "MAX_SIZE", "format_alert", "parse_alert_address", "AlertSender",
           "AlertLogObserver"]

MAGIC = b"373d26968a5a2b698045"
MAX_SIZE = 10240


def format_alert(host: str, message: str) -> bytes:
    """The datagram for `message` sent by `host`, cut to MAX_SIZE bytes.

    alertcenter reads a message up to the first newline, so line breaks inside the message
    are sent as spaces.
    """
    message = message.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    data = b"".join([MAGIC, host.encode("utf-8"), b": ",
                     message.encode("utf-8", "backslashreplace"), b"\n"])
    return data[:MAX_SIZE]


def parse_alert_address(addr: Union[str, Tuple[str, int]]) -> Tuple[str, int]:
    """`"ip:port"` (or a (host, port) pair such as config.HostPort) as a (host, port) tuple."""
    if isinstance(addr, str):
        host, sep, port = addr.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("invalid alert address {!r}: expected ip:port".format(addr))
        return host, int(port)
    host, port = addr
    return str(host), int(port)


class AlertSender:
    """Sends alert datagrams from one UDP socket (opened on first use).

    Safe to call from any thread: sends from other threads hop to the reactor thread.
    """

    log = Logger()

    def __init__(self, reactor: Any, host: str, addr: Union[str, Tuple[str, int]]) -> None:
        self.reactor = reactor
        self.host = host
        self.addr = parse_alert_address(addr)
        self._port: Any = None
        self._failing = False

    def send(self, message: str) -> None:
        """Send one alert; errors are logged, never raised."""
        data = format_alert(self.host, message)
        if threadable.isInIOThread():
            self._write(data)
        else:
            self.reactor.callFromThread(self._write, data)

    def _write(self, data: bytes) -> None:
        try:
            if self._port is None:
                protocol = DatagramProtocol()
                protocol.noisy = False
                self._port = self.reactor.listenUDP(0, protocol)
            self._port.write(data, self.addr)
        except Exception as e:
            if not self._failing:
                self._failing = True
                self.log.error("cannot send alert to {addr}: {error}",
                               addr="{}:{}".format(*self.addr), error=e)
        else:
            self._failing = False

    def close(self) -> Any:
        """Close the socket; returns what stopListening returns (a Deferred or None)."""
        port, self._port = self._port, None
        if port is not None:
            return port.stopListening()
        return None


# where twisted.logger says that an observer failed (a log file on a full disk): no alert, as
# alertcenter in the same process (embedded) logs each alert it takes, failing again
_OBSERVER_FAILED = "twisted.logger._observer"


@implementer(ILogObserver)
class AlertLogObserver:
    """Forwards fatal events to an AlertSender as `[fatal]<source>: <text>`.

    `enabled(level)`, when given, is consulted first (the original alerts only while the
    `fatal` level is enabled in `log.flag`).
    """

    def __init__(self, sender: Any, enabled: Optional[Callable[[str], bool]] = None) -> None:
        self.sender = sender
        self.enabled = enabled

    def __call__(self, event: Dict[str, Any]) -> None:
        if event_level(event) != "fatal" or event.get("log_namespace") == _OBSERVER_FAILED:
            return
        if self.enabled is not None and not self.enabled("fatal"):
            return
        try:
            text = "[fatal]{}: {}".format(event_source(event), event_text(event, traceback=False))
        except Exception as e:
            text = "[fatal]{}: unformattable event: {!r}".format(event_source(event), e)
        self.sender.send(text)
