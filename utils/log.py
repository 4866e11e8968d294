# -*- test-case-name: utils.test.test_log -*-
"""Log files in the original's format, levels and rotation, fed by twisted.logger.

Code logs with `twisted.logger.Logger` as usual.  The original has more levels than Twisted;
they map as follows (first column: the word used in `log.flag`):

    fatal   LogLevel.critical        notice  LogLevel.info  + log_clevel="notice"
    error   LogLevel.error           trace   LogLevel.debug + log_clevel="trace"
    warn    LogLevel.warn            user1   LogLevel.debug + log_clevel="user1"
    info    LogLevel.info            user2   LogLevel.debug + log_clevel="user2"
    debug   LogLevel.debug           vip     LogLevel.info  + log_clevel="vip" (always written)

`notice(log, ...)`, `trace(log, ...)` and `vip(log, ...)` emit the extra levels.

`LogFileObserver` writes one line per event::

    [2017-05-01 12:00:00.123456] [4242] [info]matchengine.server: server start

(`[pid] ` only with `log.pid`; the source is the event's namespace; failures are followed by
their traceback).  Lines are buffered and appended to the file when 10 ms passed since the
last write or 32 KiB are waiting, and by a timer; the file is reopened for every write, so
external renames are safe.  Rotation follows `log.shift`/`log.max`/`log.num`/`log.keep`
(deployment.md 4.3).  The clock is injected, so rotation is testable without waiting.

`setup_logging(config.log, alert_sender)` installs the observer (and the fatal-alert
forwarding) into the global log publisher.
"""

import atexit
import contextlib
import datetime
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, LogLevel, Logger, formatEvent, globalLogPublisher
from zope.interface import implementer

__all__ = [
    "LEVELS", "LOG_LEVELS", "parse_flags", "level_up", "level_down", "event_level",
    "event_source", "event_text", "format_line", "notice", "trace", "vip", "user1", "user2",
    "log_file_name", "LogFileObserver", "StreamLogObserver", "LogSetup", "setup_logging",
]

LEVELS: Dict[str, int] = {
    "fatal": 0x1, "error": 0x2, "warn": 0x4, "info": 0x8, "notice": 0x10,
    "debug": 0x20, "trace": 0x40, "user1": 0x80, "user2": 0x100,
}
VIP = "vip"

LOG_LEVELS = {
    LogLevel.critical: "fatal", LogLevel.error: "error", LogLevel.warn: "warn",
    LogLevel.info: "info", LogLevel.debug: "debug",
}

PERIODS = {"min": 60, "hour": 3600, "day": 86400}
_NAME_FORMATS = {"min": "%Y%m%d%H%M", "hour": "%Y%m%d%H", "day": "%Y%m%d"}

FLUSH_AFTER = 0.01          # seconds since the last write before a new line is written at once
FLUSH_SIZE = 32 * 1024      # buffered bytes that force a write
FLUSH_INTERVAL = 0.1        # timer period of the background flush


def parse_flags(text: str) -> int:
    """The level bits named in a `log.flag` string (commas and/or whitespace, any case)."""
    flags = 0
    for word in text.replace(",", " ").split():
        flags |= LEVELS.get(word.lower(), 0)
    return flags


def level_up(flags: int) -> int:
    """Enable the lowest-valued level bit among the first eight that is off (SIGTTIN)."""
    for bit in range(8):
        if not flags & (1 << bit):
            return flags | (1 << bit)
    return flags


def level_down(flags: int) -> int:
    """Disable the highest-valued level bit among the first eight that is on (SIGTTOU)."""
    for bit in reversed(range(8)):
        if flags & (1 << bit):
            return flags & ~(1 << bit)
    return flags


def _emit(logger: Any, method: str, clevel: str, fmt: str, kwargs: Dict[str, Any]) -> None:
    getattr(logger, method)(fmt, log_clevel=clevel, **kwargs)


def notice(logger: Any, fmt: str, **kwargs: Any) -> None:
    """Emit a `notice` event through a twisted Logger."""
    _emit(logger, "info", "notice", fmt, kwargs)


def trace(logger: Any, fmt: str, **kwargs: Any) -> None:
    """Emit a `trace` event (finer than debug) through a twisted Logger."""
    _emit(logger, "debug", "trace", fmt, kwargs)


def user1(logger: Any, fmt: str, **kwargs: Any) -> None:
    """Emit a `user1` event through a twisted Logger."""
    _emit(logger, "debug", "user1", fmt, kwargs)


def user2(logger: Any, fmt: str, **kwargs: Any) -> None:
    """Emit a `user2` event through a twisted Logger."""
    _emit(logger, "debug", "user2", fmt, kwargs)


def vip(logger: Any, fmt: str, **kwargs: Any) -> None:
    """Emit a `vip` event (start/stop/signal messages), written whatever `log.flag` says."""
    _emit(logger, "info", VIP, fmt, kwargs)


# Twisted's ClientService (under txredisapi's connections) says each failed attempt to
# connect at info level, a line a second while Redis is away: its callers tell the outage
# (utils.outage), and these lines are debug
_RETRY_NOTE = ("twisted.application._client_service.ClientService", "Scheduling retry ")


def event_level(event: Dict[str, Any]) -> str:
    """The original's level word of an event (`fatal` ... `user2`, or `vip`)."""
    clevel = event.get("log_clevel")
    if clevel is not None:
        return clevel
    level = LOG_LEVELS.get(event.get("log_level"), "info")
    if level == "info" and event.get("log_namespace") == _RETRY_NOTE[0] and str(
            event.get("log_format", "")).startswith(_RETRY_NOTE[1]):
        return "debug"
    return level


def event_source(event: Dict[str, Any]) -> str:
    """Where the event comes from: its namespace (or the legacy log system)."""
    namespace = event.get("log_namespace") or "-"
    if namespace == "log_legacy":
        namespace = event.get("log_system") or namespace
    return namespace


# what twistd logs as an error when it finds the pid file of a process that did not remove
# it: the daemon's previous process was killed or crashed (its watchdog started this one)
_STALE_PIDFILE = "Removing stale pidfile "


def event_text(event: Dict[str, Any], traceback: bool = True) -> str:
    """The formatted message, followed by the failure's traceback (or its one-line summary)."""
    text = formatEvent(event)
    if event.get("isError") and text.startswith(_STALE_PIDFILE):
        text = ("the previous process ended without stopping (killed, or crashed): its pid "
                "file %s removed" % text[len(_STALE_PIDFILE):])
    failure = event.get("log_failure")
    if failure is not None:
        if traceback:
            try:
                details = failure.getTraceback()
            except Exception:  # a broken failure must not break logging
                details = repr(failure)
            text = "{}\n{}".format(text, details.rstrip("\n"))
        else:
            text = "{}: {}".format(text, failure.getErrorMessage())
    return text


class _TimestampCache:
    """Formats local timestamps with microseconds, re-formatting the date part once a second."""

    def __init__(self) -> None:
        self._second: Optional[int] = None
        self._prefix = ""

    def __call__(self, when: float) -> str:
        second = int(when // 1)
        if second != self._second:
            self._prefix = datetime.datetime.fromtimestamp(second).strftime("%Y-%m-%d %H:%M:%S")
            self._second = second
        micros = int(round((when - second) * 1e6))
        if micros > 999999:
            micros = 999999
        return "{}.{:06d}".format(self._prefix, micros)


def format_line(event: Dict[str, Any], level: str, timestamp: str,
                pid: Optional[int]) -> str:
    """One log line (with trailing newline) in the original's layout."""
    pid_part = "[{}] ".format(pid) if pid is not None else ""
    return "[{}] {}[{}]{}: {}\n".format(timestamp, pid_part, level, event_source(event),
                                        event_text(event))


def log_file_name(path: str, shift: str, when: float, index: int = 0) -> str:
    """The file name for `log.path` `path` in mode `shift` at time `when`, shifted `index`."""
    if shift == "size":
        stem = path
    else:
        stem = "{}.{}".format(path, datetime.datetime.fromtimestamp(when).strftime(
            _NAME_FORMATS.get(shift, _NAME_FORMATS["day"])))
    return "{}.log.{}".format(stem, index) if index else stem + ".log"


def _global_reactor() -> Any:
    from twisted.internet import reactor
    return reactor


@implementer(ILogObserver)
class LogFileObserver:
    """Writes events enabled by `flags` to the log file, buffering and rotating like the original.

    Safe to call from any thread.  `clock` (`seconds()` and `callLater`) drives both the
    flush timer and the file naming/rotation decisions; without one, time.time() and the
    global reactor (imported when the timer starts) are used.
    """

    def __init__(self, path: str, flag: str = "", *, shift: str = "size",
                 max_size: int = 100000000, num: int = 100, keep: int = 7, pid: bool = True,
                 clock: Any = None, flush_interval: float = FLUSH_INTERVAL,
                 getpid: Callable[[], int] = os.getpid,
                 on_error: Optional[Callable[[str], None]] = None) -> None:
        self.path = path
        self.flags = parse_flags(flag)
        self.shift = shift if shift in ("size", "hour", "min", "day") else "day"
        self.max_size = max_size
        self.num = num
        self.keep = keep
        self.pid = pid
        self.flush_interval = flush_interval
        self._clock = clock
        self._seconds: Callable[[], float] = clock.seconds if clock is not None else time.time
        self._getpid = getpid
        self._on_error = on_error or self._report_error
        self._lock = threading.RLock()
        self._lines: List[str] = []
        self._size = 0
        self._last_write = float("-inf")
        self._last_unlink = 0.0
        self._buffering = False     # until start(): without the timer every line is written
        self._timer: Optional[LoopingCall] = None
        self._timestamps = _TimestampCache()
        self._reported_errors: set = set()

    @property
    def clock(self) -> Any:
        """The clock of the flush timer (the global reactor unless one was given)."""
        if self._clock is None:
            self._clock = _global_reactor()
        return self._clock

    def enabled(self, level: str) -> bool:
        """Whether lines of this level word are written."""
        return level == VIP or bool(self.flags & LEVELS.get(level, 0))

    def __call__(self, event: Dict[str, Any]) -> None:
        level = event_level(event)
        if not self.enabled(level):
            return
        pid = "[{}] ".format(self._getpid()) if self.pid else ""
        try:
            body = "{}[{}]{}: {}\n".format(pid, level, event_source(event), event_text(event))
        except Exception as e:  # formatting must never raise into the publisher
            body = "{}[error]utils.log: unformattable event: {!r}\n".format(pid, e)
        with self._lock:
            now = self._seconds()
            when = event.get("log_time")
            line = "[{}] {}".format(self._timestamps(now if when is None else when), body)
            self._lines.append(line)
            self._size += len(line)
            if (not self._buffering or self._size >= FLUSH_SIZE
                    or now - self._last_write >= FLUSH_AFTER):
                self._flush(now)

    def start(self) -> None:
        """Start buffering, with the periodic flush timer."""
        with self._lock:
            self._buffering = self.flush_interval > 0
        if self._timer is None and self.flush_interval > 0:
            self._timer = LoopingCall(self.flush)
            self._timer.clock = self.clock
            self._timer.start(self.flush_interval, now=False)

    def stop(self) -> None:
        """Flush, stop the timer, and write every later line at once (nothing is lost)."""
        if self._timer is not None:
            timer, self._timer = self._timer, None
            if timer.running:
                timer.stop()
        with self._lock:
            self._buffering = False
            self._flush(self._seconds())

    def flush(self) -> None:
        """Write the buffered lines now."""
        with self._lock:
            self._flush(self._seconds())

    @property
    def buffered(self) -> int:
        """Number of bytes waiting to be written."""
        return self._size

    def current_file(self, now: Optional[float] = None) -> str:
        """The name of the file lines are appended to at time `now`."""
        return log_file_name(self.path, self.shift, self._seconds() if now is None else now)

    def _flush(self, now: float) -> None:
        if not self._lines:
            return
        data = "".join(self._lines).encode("utf-8", "backslashreplace")
        self._lines = []
        self._size = 0
        self._last_write = now
        name = self.current_file(now)
        try:
            self._shift(name, now)
            self._unlink_expired(now)
        except OSError as e:
            self._on_error("cannot rotate {}: {}".format(name, e))
        try:
            with open(name, "ab") as f:
                f.write(data)
        except OSError as e:
            self._on_error("cannot write {}: {}".format(name, e))

    def _shift(self, name: str, now: float) -> None:
        if self.max_size <= 0:
            return
        try:
            size = os.stat(name).st_size
        except FileNotFoundError:
            return
        if size < self.max_size:
            return
        if self.num == 1:
            os.unlink(name)
            return
        if self.num == 0:
            count = 0
            while os.path.exists(log_file_name(self.path, self.shift, now, count)):
                count += 1
        else:
            count = self.num - 1
        for index in range(count - 1, -1, -1):
            source = log_file_name(self.path, self.shift, now, index)
            if os.path.exists(source):
                os.rename(source, log_file_name(self.path, self.shift, now, index + 1))

    def _unlink_expired(self, now: float) -> None:
        period = PERIODS.get(self.shift)
        if period is None or self.keep == 0 or now - self._last_unlink <= period:
            return
        self._last_unlink = now
        expired = now - period * self.keep
        if self.num == 0:
            count = 0
            while os.path.exists(log_file_name(self.path, self.shift, expired, count)):
                count += 1
        else:
            count = self.num
        for index in range(count):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(log_file_name(self.path, self.shift, expired, index))

    def _report_error(self, message: str) -> None:
        # The log cannot report its own failures; say it once on stderr.
        if message not in self._reported_errors:
            self._reported_errors.add(message)
            sys.stderr.write("log: {}\n".format(message))
            sys.stderr.flush()


@implementer(ILogObserver)
class StreamLogObserver:
    """Writes enabled events immediately to a text stream (stderr), in the same format."""

    def __init__(self, stream: Any, enabled: Callable[[str], bool],
                 pid: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.pid = pid
        self._timestamps = _TimestampCache()
        self._lock = threading.Lock()

    def __call__(self, event: Dict[str, Any]) -> None:
        level = event_level(event)
        if not self.enabled(level):
            return
        when = event.get("log_time")
        if when is None:
            when = time.time()
        with self._lock:
            line = format_line(event, level, self._timestamps(when),
                               os.getpid() if self.pid else None)
            # a closed or broken stream (a terminal gone) must not break the logging
            with contextlib.suppress(OSError, ValueError):
                self.stream.write(line)
                self.stream.flush()


class LogSetup:
    """The observers installed by setup_logging; `remove()` takes them out again."""

    def __init__(self, publisher: Any, file_observer: LogFileObserver,
                 others: List[Any]) -> None:
        self.publisher = publisher
        self.file_observer = file_observer
        self.observers = [file_observer] + others

    def flush(self) -> None:
        self.file_observer.flush()

    def stop(self) -> None:
        """Flush and stop buffering; observers stay installed so late lines are kept."""
        self.file_observer.stop()

    def remove(self) -> None:
        """Flush and remove every observer from the publisher."""
        atexit.unregister(self.file_observer.flush)
        self.file_observer.stop()
        for observer in self.observers:
            self.publisher.removeObserver(observer)

    def service(self, warnings: Sequence[str] = ()) -> Service:
        """A service whose stopService flushes the log (add it first to the MultiService).

        `warnings` are logged when it starts.  Under twistd that is after logging began:
        an event logged before then is written twice, once as it happens and once when
        twistd replays the events it held to every observer."""
        return _LogService(self, warnings)


class _LogService(Service):
    name = "log"

    def __init__(self, setup: LogSetup, warnings: Sequence[str]) -> None:
        self._setup = setup
        self._warnings = list(warnings)

    def startService(self) -> None:
        Service.startService(self)
        self._setup.file_observer.start()
        logger = Logger(namespace="daemon", observer=self._setup.publisher)
        # written whatever log.flag says, as the original's start and stop lines
        vip(logger, "process {pid} started: {argv}", pid=os.getpid(), argv=" ".join(sys.argv))
        for text in self._warnings:
            logger.warn("{text}", text=text)

    def stopService(self) -> None:
        Service.stopService(self)
        vip(Logger(namespace="daemon", observer=self._setup.publisher),
            "process {pid} stopped", pid=os.getpid())
        self._setup.stop()


def setup_logging(log_section: Any, alert_sender: Any = None, stderr: bool = False, *,
                  clock: Any = None, publisher: Any = None, start: bool = True,
                  **overrides: Any) -> LogSetup:
    """Install a LogFileObserver configured by a loaded `log` section.

    FATAL events are also handed to `alert_sender` (an utils.alert.AlertSender) while `fatal`
    is enabled; `stderr=True` also copies the lines to stderr.  `overrides` replace observer
    settings (e.g. alertcenter's fixed day rotation: shift="day", max_size=..., num=10, keep=7).
    """
    settings = dict(shift=log_section.shift, max_size=log_section.max, num=log_section.num,
                    keep=log_section.keep, pid=log_section.pid)
    settings.update(overrides)
    observer = LogFileObserver(log_section.path, log_section.flag, clock=clock, **settings)
    publisher = globalLogPublisher if publisher is None else publisher
    others: List[Any] = []
    if alert_sender is not None:
        from utils.alert import AlertLogObserver
        others.append(AlertLogObserver(alert_sender, enabled=observer.enabled))
    if stderr:
        others.append(StreamLogObserver(sys.stderr, observer.enabled, pid=settings["pid"]))
    for item in [observer] + others:
        publisher.addObserver(item)
    atexit.register(observer.flush)
    if start:
        observer.start()
    return LogSetup(publisher, observer, others)
