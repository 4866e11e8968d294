"""Tests for utils.log: levels, line format, buffering and rotation of the log file."""

import datetime
import io
import os
import sys
import threading

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.logger._legacy import publishToNewObserver
from twisted.python.log import textFromEventDict
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from utils import log as ulog
from utils.config import LOG, Section, load_data
from utils.log import (
    LogFileObserver, event_level, level_down, level_up, log_file_name, parse_flags,
    setup_logging)

T0 = datetime.datetime(2017, 5, 1, 12, 0, 0).timestamp()   # local time, a whole hour


def stamp(when):
    return datetime.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S.%f")


def event(text="hello", level=LogLevel.info, when=T0, namespace="me.server", **extra):
    result = {"log_format": text, "log_level": level, "log_time": when,
              "log_namespace": namespace}
    result.update(extra)
    return result


def read(path):
    with open(path) as f:
        return f.read()


class LevelTests(SynchronousTestCase):

    def test_parse_flags(self):
        """Words are separated by commas and/or spaces, any case; unknown ones are ignored."""
        self.assertEqual(parse_flags("fatal,error,warn,info,debug,trace"), 0x6F)
        self.assertEqual(parse_flags(" Fatal  ERROR,,notice\tuser2 bogus"), 0x113)
        self.assertEqual(parse_flags(""), 0)

    def test_level_up_down(self):
        """SIGTTIN enables the lowest bit that is off; SIGTTOU disables the highest on (of 8)."""
        self.assertEqual(level_up(0x0F), 0x1F)
        self.assertEqual(level_up(0x0D), 0x0F)
        self.assertEqual(level_up(0xFF), 0xFF)
        self.assertEqual(level_down(0x0F), 0x07)
        self.assertEqual(level_down(0x180), 0x100)
        self.assertEqual(level_down(0), 0)

    def test_event_levels(self):
        """Twisted levels map to the original's words; helpers emit the extra levels."""
        events = []
        logger = Logger(namespace="x", observer=events.append)
        logger.critical("a")
        logger.error("b")
        logger.warn("c")
        logger.info("d")
        logger.debug("e")
        ulog.notice(logger, "f {n}", n=1)
        ulog.trace(logger, "g")
        ulog.user1(logger, "h")
        ulog.user2(logger, "i")
        ulog.vip(logger, "j")
        self.assertEqual([event_level(e) for e in events],
                         ["fatal", "error", "warn", "info", "debug", "notice", "trace",
                          "user1", "user2", "vip"])
        self.assertEqual(events[5]["n"], 1)
        self.assertEqual(events[6]["log_level"], LogLevel.debug)

    def test_connect_retries_are_debug(self):
        """Twisted's ClientService saying each attempt to connect again (a line a second
        while Redis is away, under txredisapi) is debug; its other lines keep their level."""
        from twisted.application.internet import ClientService
        events = []
        logger = Logger(namespace=ClientService._log.namespace, observer=events.append)
        logger.info("Scheduling retry {attempt} to connect {endpoint} in {delay} seconds.",
                    attempt=1, endpoint="e", delay=1.0)
        logger.info("other news")
        Logger(namespace="x", observer=events.append).info("Scheduling retry of my own")
        self.assertEqual([event_level(e) for e in events], ["debug", "info", "info"])


class ObserverTestMixin:

    def make(self, flag="fatal,error,warn,info,debug", start_at=T0, start=True, **kwargs):
        self.clock = Clock()
        self.clock.advance(start_at)
        self.base = os.path.join(self.mktemp(), "module")
        os.makedirs(os.path.dirname(self.base))
        self.errors = []
        kwargs.setdefault("getpid", lambda: 4242)
        observer = LogFileObserver(self.base, flag, clock=self.clock,
                                   on_error=self.errors.append, **kwargs)
        if start:
            observer.start()
        self.addCleanup(observer.stop)
        return observer


class FormatTests(ObserverTestMixin, SynchronousTestCase):

    def test_line_format(self):
        """A line is [local time with microseconds] [pid] [level]namespace: message."""
        observer = self.make()
        observer(event("order {id} filled", id=7, when=T0 + 0.25))
        self.assertEqual(read(self.base + ".log"),
                         "[{}] [4242] [info]me.server: order 7 filled\n".format(stamp(T0 + 0.25)))
        self.assertTrue(stamp(T0 + 0.25).endswith(".250000"))

    def test_without_pid(self):
        """With log.pid false the pid part is left out."""
        observer = self.make(pid=False)
        observer(event("x", level=LogLevel.warn))
        self.assertEqual(read(self.base + ".log"), "[{}] [warn]me.server: x\n".format(stamp(T0)))

    def test_flags_filter(self):
        """Only enabled levels are written, vip lines always."""
        observer = self.make(flag="error, trace")
        observer(event("info line"))
        observer(event("error line", level=LogLevel.error))
        observer(event("debug line", level=LogLevel.debug))
        observer(event("trace line", level=LogLevel.debug, log_clevel="trace"))
        observer(event("vip line", log_clevel="vip"))
        observer.flush()
        lines = read(self.base + ".log").splitlines()
        self.assertEqual([line.split("] ", 2)[2] for line in lines],
                         ["[error]me.server: error line", "[trace]me.server: trace line",
                          "[vip]me.server: vip line"])

    def test_flags_can_change(self):
        """Changing observer.flags (signal level up/down) takes effect at once."""
        observer = self.make(flag="info")
        observer(event("one", level=LogLevel.debug))
        observer.flags = level_up(level_up(level_up(level_up(level_up(observer.flags)))))
        observer(event("two", level=LogLevel.debug))
        observer.flush()
        self.assertIn("[debug]me.server: two", read(self.base + ".log"))
        self.assertNotIn("one", read(self.base + ".log"))

    def test_failure_traceback(self):
        """A failure event is followed by its traceback."""
        observer = self.make()
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        observer(event("step failed", level=LogLevel.critical, log_failure=failure))
        text = read(self.base + ".log")
        self.assertTrue(text.startswith("[{}] [4242] [fatal]me.server: step failed\n".format(
            stamp(T0))))
        self.assertIn("ZeroDivisionError", text)
        self.assertIn("Traceback", text)

    def test_legacy_and_missing_fields(self):
        """Legacy events use their system; events without time use the clock."""
        observer = self.make()
        observer({"log_format": "old", "log_level": LogLevel.info,
                  "log_namespace": "log_legacy", "log_system": "-"})
        publishToNewObserver(observer, {"message": ("legacy text",), "isError": 0,
                                        "system": "HTTPChannel,0", "time": T0},
                             textFromEventDict)
        observer.flush()
        lines = read(self.base + ".log").splitlines()
        self.assertEqual(lines[0], "[{}] [4242] [info]-: old".format(stamp(T0)))
        self.assertTrue(lines[1].endswith("[info]HTTPChannel,0: legacy text"), lines[1])

    def test_stale_pidfile_said_plainly(self):
        """twistd's error on a pid file left behind says what happened: the previous process
        was killed or crashed (under the watchdog, the line that alerts of it)."""
        event = {"log_format": "{msg}", "msg": "Removing stale pidfile log/x.worker.pid",
                 "isError": 1}
        self.assertEqual(ulog.event_text(event),
                         "the previous process ended without stopping (killed, or crashed): "
                         "its pid file log/x.worker.pid removed")
        event.pop("isError")
        self.assertEqual(ulog.event_text(event), "Removing stale pidfile log/x.worker.pid")

    def test_bad_format_does_not_raise(self):
        """An event whose format cannot be filled still gives a line and no exception."""
        observer = self.make()
        observer(event("value {missing}"))
        observer.flush()
        self.assertIn("Unable to format event", read(self.base + ".log"))

    def test_unwritable_path(self):
        """Write errors are reported through on_error, never raised."""
        observer = self.make()
        observer.path = os.path.join(self.base, "no", "dir")
        observer(event("lost"))
        self.assertEqual(len(self.errors), 1)
        self.assertIn("cannot write", self.errors[0])


class BufferTests(ObserverTestMixin, SynchronousTestCase):

    def test_buffering_and_timer(self):
        """Lines within 10 ms of a write wait in the buffer until the timer flushes them."""
        observer = self.make()
        observer(event("first"))
        self.assertEqual(len(read(self.base + ".log").splitlines()), 1)
        observer(event("second"))
        observer(event("third"))
        self.assertEqual(len(read(self.base + ".log").splitlines()), 1)
        self.assertGreater(observer.buffered, 0)
        self.clock.advance(ulog.FLUSH_INTERVAL)
        self.assertEqual(len(read(self.base + ".log").splitlines()), 3)
        self.assertEqual(observer.buffered, 0)

    def test_write_after_quiet_period(self):
        """A line arriving 10 ms or more after the last write is written at once."""
        observer = self.make()
        observer(event("first"))
        self.clock.advance(0.005)
        observer(event("second"))
        self.assertEqual(len(read(self.base + ".log").splitlines()), 1)
        self.clock.advance(0.005)
        observer(event("third"))
        self.assertEqual(len(read(self.base + ".log").splitlines()), 3)

    def test_size_threshold(self):
        """32 KiB of buffered text are written without waiting for the timer."""
        observer = self.make()
        observer(event("first"))
        for _ in range(40):
            observer(event("x" * 1000))
        written = len(read(self.base + ".log"))
        self.assertGreaterEqual(written, ulog.FLUSH_SIZE)
        self.assertLess(observer.buffered, ulog.FLUSH_SIZE)

    def test_unstarted_observer_writes_at_once(self):
        """Before start() (no flush timer) nothing is held back."""
        observer = self.make(start=False)
        for text in ["one", "two", "three"]:
            observer(event(text))
        self.assertEqual(len(read(self.base + ".log").splitlines()), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_flushes_and_unbuffers(self):
        """stop() writes what is buffered and later lines are written immediately."""
        observer = self.make()
        observer(event("first"))
        observer(event("second"))
        observer.stop()
        self.assertEqual(len(read(self.base + ".log").splitlines()), 2)
        observer(event("late"))
        self.assertEqual(len(read(self.base + ".log").splitlines()), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_threads(self):
        """Events from several threads all arrive, each line whole."""
        observer = self.make()

        def emit(n):
            for i in range(200):
                observer(event("thread {n} line {i}", n=n, i=i))

        threads = [threading.Thread(target=emit, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        observer.flush()
        lines = read(self.base + ".log").splitlines()
        self.assertEqual(len(lines), 800)
        self.assertTrue(all(" line " in line for line in lines))


class RotationTests(ObserverTestMixin, SynchronousTestCase):

    def test_file_names(self):
        """Names per log.shift: size <path>.log, hour/min/day stamped, shifted .log.N."""
        when = T0 + 5 * 60
        self.assertEqual(log_file_name("/l/me", "size", when), "/l/me.log")
        self.assertEqual(log_file_name("/l/me", "size", when, 2), "/l/me.log.2")
        self.assertEqual(log_file_name("/l/me", "hour", when), "/l/me.2017050112.log")
        self.assertEqual(log_file_name("/l/me", "min", when, 1), "/l/me.201705011205.log.1")
        self.assertEqual(log_file_name("/l/me", "day", when), "/l/me.20170501.log")
        self.assertEqual(log_file_name("/l/me", "week", when), "/l/me.20170501.log")

    def write_lines(self, observer, count):
        for i in range(count):
            observer(event("line {i} padding padding", i=i))
            self.clock.advance(2 * ulog.FLUSH_AFTER)

    def test_size_rotation(self):
        """Reaching log.max shifts .log -> .log.1 -> .log.2 keeping at most num files."""
        observer = self.make(max_size=150, num=3)
        self.write_lines(observer, 12)
        names = sorted(os.listdir(os.path.dirname(self.base)))
        self.assertEqual(names, ["module.log", "module.log.1", "module.log.2"])
        for name in names:
            self.assertLess(os.path.getsize(os.path.join(os.path.dirname(self.base), name)),
                            150 + 100)
        self.assertIn("line 11 ", read(self.base + ".log"))

    def test_num_one_deletes(self):
        """With log.num 1 a full file is deleted instead of shifted."""
        observer = self.make(max_size=150, num=1)
        self.write_lines(observer, 12)
        self.assertEqual(os.listdir(os.path.dirname(self.base)), ["module.log"])
        self.assertIn("line 11 ", read(self.base + ".log"))

    def test_num_zero_unlimited(self):
        """With log.num 0 every existing file is shifted and none deleted."""
        observer = self.make(max_size=150, num=0)
        self.write_lines(observer, 12)
        names = os.listdir(os.path.dirname(self.base))
        self.assertGreater(len(names), 3)
        total = "".join(read(os.path.join(os.path.dirname(self.base), n)) for n in names)
        self.assertEqual(total.count("\n"), 12)

    def test_max_zero_never_rotates(self):
        """log.max 0 disables size rotation."""
        observer = self.make(max_size=0, num=3)
        self.write_lines(observer, 12)
        self.assertEqual(os.listdir(os.path.dirname(self.base)), ["module.log"])

    def test_hourly_files(self):
        """In hour mode the file changes with the hour."""
        observer = self.make(shift="hour")
        observer(event("a"))
        self.clock.advance(3600)
        observer(event("b"))
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.base))),
                         ["module.2017050112.log", "module.2017050113.log"])

    def test_keep_deletes_old_period(self):
        """Once per period the files of the period log.keep periods ago are deleted."""
        observer = self.make(shift="hour", keep=2, num=3, flush_interval=0)
        directory = os.path.dirname(self.base)
        old = [log_file_name(self.base, "hour", T0 - 2 * 3600, i) for i in range(3)]
        older = log_file_name(self.base, "hour", T0 - 3 * 3600)
        for name in old + [older]:
            open(name, "w").close()
        observer(event("a"))
        remaining = sorted(os.listdir(directory))
        self.assertEqual(remaining, ["module.2017050109.log", "module.2017050112.log"])
        # Not again within the same period: a recreated file survives until the next hour.
        open(old[0], "w").close()
        self.clock.advance(1800)
        observer(event("b"))
        self.assertTrue(os.path.exists(old[0]))

    def test_keep_zero(self):
        """log.keep 0 never deletes."""
        observer = self.make(shift="hour", keep=0)
        name = log_file_name(self.base, "hour", T0 - 7 * 3600)
        open(name, "w").close()
        observer(event("a"))
        self.assertTrue(os.path.exists(name))


class _Sender:
    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)


class SetupTests(SynchronousTestCase):

    def section(self, **extra):
        directory = self.mktemp()
        os.makedirs(directory)
        data = {"path": os.path.join(directory, "me"), "flag": "fatal,error,info"}
        data.update(extra)
        return load_data({"log": data}, Section({"log": LOG})).log

    def test_setup_installs_and_removes(self):
        """setup_logging adds the observers to the publisher; remove() takes them out."""
        publisher = LogPublisher()
        clock = Clock()
        sender = _Sender()
        section = self.section(shift="HOUR", pid=False)
        setup = setup_logging(section, sender, clock=clock, publisher=publisher)
        self.assertEqual(setup.file_observer.shift, "hour")
        logger = Logger(namespace="me.core", observer=publisher)
        logger.critical("disk {name} full", name="sda")
        logger.error("bad thing")
        logger.debug("hidden")
        setup.remove()
        logger.error("after removal")
        self.assertEqual(sender.sent, ["[fatal]me.core: disk sda full"])
        text = read(setup.file_observer.current_file(clock.seconds()))
        self.assertEqual([line.split("] ", 1)[1] for line in text.splitlines()],
                         ["[fatal]me.core: disk sda full", "[error]me.core: bad thing"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_alert_when_fatal_disabled(self):
        """Fatal events are only alerted while fatal is enabled in log.flag."""
        publisher = LogPublisher()
        sender = _Sender()
        setup = setup_logging(self.section(flag="error"), sender, clock=Clock(),
                              publisher=publisher)
        self.addCleanup(setup.remove)
        Logger(observer=publisher).critical("quiet")
        self.assertEqual(sender.sent, [])

    def test_stderr_copy(self):
        """stderr=True copies enabled lines to stderr."""
        stream = io.StringIO()
        self.patch(sys, "stderr", stream)
        publisher = LogPublisher()
        setup = setup_logging(self.section(pid=False), stderr=True, clock=Clock(),
                              publisher=publisher)
        self.addCleanup(setup.remove)
        Logger(namespace="me", observer=publisher).info("started")
        Logger(namespace="me", observer=publisher).debug("hidden")
        self.assertTrue(stream.getvalue().endswith("] [info]me: started\n"))
        self.assertEqual(stream.getvalue().count("\n"), 1)

    def test_overrides_and_service(self):
        """Overrides replace configured rotation; the service flushes on stop."""
        publisher = LogPublisher()
        clock = Clock()
        clock.advance(T0)
        setup = setup_logging(self.section(), clock=clock, publisher=publisher, start=False,
                              shift="day", num=10)
        self.addCleanup(setup.remove)
        self.assertEqual((setup.file_observer.shift, setup.file_observer.num), ("day", 10))
        service = setup.service()
        service.startService()
        logger = Logger(namespace="me", observer=publisher)
        logger.info("one")
        logger.info("two")
        self.assertGreater(setup.file_observer.buffered, 0)
        service.stopService()
        lines = read(setup.file_observer.current_file()).splitlines()
        self.assertEqual(len(lines), 4)
        self.assertIn("[vip]daemon: process %d started: " % os.getpid(), lines[0])
        self.assertTrue(lines[3].endswith("[vip]daemon: process %d stopped" % os.getpid()))
        self.assertTrue(setup.file_observer.current_file().endswith(".20170501.log"))

    def test_start_and_stop_always_written(self):
        """The start and stop lines are written whatever log.flag says."""
        publisher = LogPublisher()
        setup = setup_logging(self.section(flag="fatal"), clock=Clock(), publisher=publisher,
                              start=False)
        self.addCleanup(setup.remove)
        service = setup.service()
        service.startService()
        Logger(namespace="me", observer=publisher).info("hidden")
        service.stopService()
        lines = read(setup.file_observer.current_file()).splitlines()
        self.assertEqual([line.split("]", 2)[-1].split(":")[0].strip() for line in lines],
                         ["[vip]daemon", "[vip]daemon"])
