# -*- test-case-name: utils.test.test_daemon -*-
"""What every daemon's twistd plugin shares: its options and the top of its service tree.

`daemon_options(...)` makes the Options class of a module: `--config` (default: the module's
own `conf/config.json`), `--stderr`, and a config that fails to load is a usage error naming
the file and key.  `service_tree(cfg, options, reactor)` makes the `OrderedMultiService`
every daemon starts from, with the log set up per the config's `log` block and FATAL events
sent to alertcenter when the config has an `alert` block.  A daemon that cannot do its work
calls `give_up`, which stops the process with exit status 1 under twistd.
"""

import atexit
import contextlib
import faulthandler
import os
import signal
import sys
import time
import weakref

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from utils.config import ConfigError, read
from utils.log import log_file_name

__all__ = ["daemon_options", "service_tree", "SignalService", "OrderedMultiService",
           "gateway_tree", "listener_tree", "worker_tree", "give_up", "gave_up",
           "exit_status_on_failure", "plugin_reactor", "stop_reactor"]

# a worker runs in its own process group: Ctrl-C in a terminal reaches the listener only,
# which stops the workers itself
# twistd run by `python -c`, named as twistd names itself (its messages begin with argv[0])
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
WORKER_TWISTD = "import os; os.setpgrp(); " + TWISTD


log = Logger()

# why the daemons of this process gave up, if they did
_gave_up = []
# whether this process is a daemon run by twistd (see `exit_status_on_failure`)
_twistd = []
# the reactors a `give_up` has asked to stop once they run: one request each
_stop_queued = weakref.WeakSet()


# set by the watchdog for its worker: where the worker writes its pid once it is ready
READY_FILE = "VIABTC_READY_FILE"
# set by a gateway's listener for its workers: the config text it read, which a worker takes
# in place of the file (one started again after a crash would read the file as it is then:
# edited since, its settings would be that worker's alone, or it could not start at all)
WORKER_CONFIG = "VIABTC_WORKER_CONFIG"


def mark_ready():
    """Note that this process has finished starting (its state loaded, its ports open), for
    the watchdog's `check`: until then a worker that runs without an open port is starting,
    not down (a matchengine replaying its operation log may take minutes, and a cron line
    restarting it meanwhile would have it start over for ever).  Its pid goes into the file
    the watchdog named in its environment; nothing without one."""
    path = os.environ.get(READY_FILE)
    if not path:
        return
    partial = path + ".partial"
    try:
        with open(partial, "w") as f:
            f.write("%d\n" % os.getpid())
        os.replace(partial, path)
    except OSError as e:
        log.warn("cannot write {path} ({error}): check_alive.sh will call this daemon "
                 "starting", path=path, error=e.strerror or e)


def give_up(reactor, logger, what, failure=None):
    """Stop a daemon that cannot do its work (an address it cannot bind, state it cannot
    load): log `what` with the failure (default: the exception being handled) as critical,
    and stop the reactor, now or, when it does not run yet, as soon as it does.  Under
    twistd it is also printed on stderr, and the process exits with status 1.

    Several daemons may give up together (the embedded exchange's listeners, each on a port
    taken): the reactor is asked to stop once, and a reactor already stopping is left as
    it is, rather than each further request failing with ReactorNotRunning."""
    if failure is None:
        failure = Failure()
    logger.failure(what, failure)
    if _twistd:
        # the terminal of a daemon run in the foreground; its log is a file
        print("%s: %s" % (what, failure.getErrorMessage()), file=sys.__stderr__, flush=True)
    _gave_up.append(what)
    if reactor.running:
        stop_reactor(reactor)
    elif reactor not in _stop_queued:
        _stop_queued.add(reactor)
        reactor.callWhenRunning(stop_reactor, reactor)


def gave_up():
    """Why the daemons of this process gave up (`give_up`), if they did."""
    return list(_gave_up)


def plugin_reactor(reactor=None):
    """The reactor a plugin's makeService builds on: the one a test passes, else the global
    one of twistd, whose process then exits with status 1 when a daemon gives up."""
    if reactor is not None:
        return reactor
    exit_status_on_failure()
    from twisted.internet import reactor as global_reactor
    return global_reactor


def exit_status_on_failure():
    """Make this twistd process exit with status 1 when one of its daemons gave up.

    twistd exits with 0 whenever its reactor stops.  The plugins' makeService calls this
    when it runs under twistd, so that a daemon that could not start is seen as failed (by a
    shell, a supervisor, the watchdog's log); tests, which pass their own reactor, do not.
    """
    if not _twistd:
        _twistd.append(True)
        atexit.register(_exit_if_gave_up)


def _exit_if_gave_up():
    if _gave_up:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


class OrderedMultiService(service.MultiService):
    """A MultiService that stops its children one after the other, last added first.

    Twisted's MultiService asks every child to stop at once, so a service added early (the
    log, the stores of the embedded exchange) would be closed while a later one is still
    flushing into it.  Here each child's stop is waited for before the next one is asked;
    a child whose stop fails is logged and the others still stop; one that is not running
    (never started, as a later stage of the embedded exchange's modules) is left as it is.
    """

    def stopService(self):
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop_children())

    log = Logger()

    async def _stop_children(self):
        for child in reversed(list(self)):
            if not child.running:
                continue
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:
                self.log.failure("stopping {service} failed", service=child)


def daemon_options(package_file, load, longdesc, prepare=None, workers=False):
    """Options for the daemon of the package whose `__file__` (or any module of it) is given.

    `load(path)` loads the config; `prepare(options)` may derive more from it (its
    ConfigError is reported like a load error).  `workers=True` adds `--worker N`, which the
    listener of a daemon with `worker_num` > 1 gives the processes it starts; `load(path,
    raw)` then takes the config's bytes, kept as `config_text`: those the listener read, for
    its workers (`listener_tree`).
    """
    default = os.path.join(os.path.dirname(os.path.abspath(package_file)), "conf",
                           "config.json")

    class Options(usage.Options):
        synopsis = "[options]"
        optParameters = [["config", "c", default, "path of config.json"]]
        optFlags = [["stderr", None, "also write the log to stderr"]]

        def postOptions(self):
            try:
                if workers:
                    # the text a listener hands its workers, or a worker takes from it
                    if self.get("worker") is not None and WORKER_CONFIG in os.environ:
                        self["config_text"] = os.environ[WORKER_CONFIG].encode("utf-8")
                    else:
                        self["config_text"] = read(self["config"])
                    self["loaded"] = load(self["config"], self["config_text"])
                else:
                    self["loaded"] = load(self["config"])
                if prepare is not None:
                    prepare(self)
                log_directory(self["config"], self["loaded"])
            except (ConfigError, OSError) as e:
                raise usage.UsageError(str(e))

    if workers:
        Options.optParameters = Options.optParameters + [
            ["worker", None, None, "(started by the listener when worker_num > 1) serve "
             "as worker N, adopting the connections the listener passes on fd 3", int]]
    Options.longdesc = longdesc
    return Options


def log_directory(path, cfg):
    """Make the directory of the config's `log.path` when it is missing; ConfigError naming
    the key when it cannot be made or written to, or when the log file there is a directory
    or cannot be written to (the daemon would run without a log)."""
    section = cfg.get("log") if hasattr(cfg, "get") else None
    if section is None:
        return
    directory = os.path.dirname(os.path.abspath(section.path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise ConfigError("%s: log.path: cannot make the directory %s: %s"
                          % (path, directory, e.strerror or e)) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError("%s: log.path: the directory %s cannot be written to"
                          % (path, directory))
    name = log_file_name(os.path.abspath(section.path), section.get("shift", "size"),
                         time.time())
    if os.path.isdir(name) or (os.path.exists(name) and not os.access(name, os.W_OK)):
        raise ConfigError("%s: log.path: %s cannot be written to" % (path, name))


LIMITS = (("file_limit", "RLIMIT_NOFILE"), ("core_limit", "RLIMIT_CORE"))


def raise_limits(process):
    """Raise the open-files and core-size limits to the `process` section's values.

    A limit is only ever raised, and 0 leaves it.  Where the hard limit cannot be raised
    (without the privilege to) the soft one goes as high as the hard one allows.  Returns
    warnings naming the key, for the log.
    """
    import resource
    warnings = []
    for key, name in LIMITS:
        wanted = process[key] if process is not None else 0
        if not wanted:
            continue
        which = getattr(resource, name)
        soft, hard = resource.getrlimit(which)
        if soft == resource.RLIM_INFINITY or soft >= wanted:
            continue
        try:
            resource.setrlimit(which, (wanted, max(hard, wanted)
                                       if hard != resource.RLIM_INFINITY else hard))
        except (ValueError, OSError) as e:
            resource.setrlimit(which, (hard, hard))
            warnings.append("process.%s: cannot raise the limit to %d (%s); it is %d"
                            % (key, wanted, e, hard))
    return warnings


class SignalService(service.Service):
    """The original's signals, handled once the reactor runs (after twistd's own handlers):

    - SIGTERM and SIGQUIT stop the daemon cleanly, flushing what it holds; it then exits with
      status 0, which tells its watchdog to stop with it (a worker that dies otherwise is
      started again);
    - SIGTTIN and SIGTTOU turn the log's next level on or its last level off (`log.flag`);
    - SIGUSR1 is only noted.

    Each is noted in the log whatever `log.flag` says.  A crash (SIGSEGV, SIGABRT) writes the
    Python stacks on stderr, which the watchdog keeps in its log.
    """

    name = "signals"

    def __init__(self, reactor, log_setup):
        self._reactor = reactor
        self._log_setup = log_setup

    def startService(self):
        service.Service.startService(self)
        self._reactor.callWhenRunning(self._install)

    def _install(self):
        # without a usable stderr, a crash shows in the watchdog's log alone
        with contextlib.suppress(AttributeError, ValueError, OSError):
            faulthandler.enable(sys.__stderr__)
        for number in (signal.SIGTERM, signal.SIGQUIT, signal.SIGTTIN, signal.SIGTTOU,
                       signal.SIGUSR1):
            signal.signal(number, self._received)

    def _received(self, number, frame):
        self._reactor.callFromThread(self.handle, number)

    def handle(self, number):
        """What the signal `number` does (the handler, on the reactor thread)."""
        from utils.log import level_down, level_up, vip
        logger = Logger(namespace="daemon", observer=self._log_setup.publisher)
        what = "[{pid}] signal {number} ({name}) received"
        name, pid = signal.Signals(number).name, os.getpid()
        if number in (signal.SIGTERM, signal.SIGQUIT):
            vip(logger, what + ", exiting", pid=pid, number=number, name=name)
            stop_reactor(self._reactor)
        elif number in (signal.SIGTTIN, signal.SIGTTOU):
            observer = self._log_setup.file_observer
            change = level_up if number == signal.SIGTTIN else level_down
            observer.flags = change(observer.flags)
            vip(logger, what + ", logging level {way}: {flags}", pid=pid, number=number,
                name=name, way="up" if number == signal.SIGTTIN else "down",
                flags=hex(observer.flags))
        else:
            vip(logger, what, pid=pid, number=number, name=name)


def stop_reactor(reactor):
    """Stop `reactor`, unless it is stopping already."""
    from twisted.internet.error import ReactorNotRunning
    with contextlib.suppress(ReactorNotRunning):
        reactor.stop()


def service_tree(cfg, options, reactor, alerts=True, **log_overrides):
    """The daemon's top service with its log (and alerts) set up; `top.log_setup` keeps it.

    The `process` section's limits are raised first (a failure is logged as a warning).
    Without an `alert` section a warning says that fatal lines reach no alertcenter (unless
    `alerts` is false: alertcenter itself).  Under
    twistd the original's signals are handled (`SignalService`)."""
    from utils.alert import AlertSender
    from utils.log import setup_logging
    warnings = raise_limits(cfg.get("process"))
    top = OrderedMultiService()
    alert = cfg.get("alert")
    sender = AlertSender(reactor, alert.host, alert.addr) if alert else None
    if sender is None and alerts:
        warnings.append("alert: no such section; fatal log lines are sent to no alertcenter")
    setup = setup_logging(cfg.log, sender, stderr=options["stderr"], start=False,
                          **log_overrides)
    setup.service(warnings).setServiceParent(top)
    top.log_setup = setup
    if _twistd:
        SignalService(reactor, setup).setServiceParent(top)
    return top


def worker_command(module, options, index):
    """The command line of worker `index` of the daemon `module` run with `options`."""
    cmd = [sys.executable, "-c", WORKER_TWISTD, "-n", "--pidfile", "", "--logfile", os.devnull,
           module, "--config", os.path.abspath(options["config"]), "--worker", str(index)]
    return cmd + (["--stderr"] if options["stderr"] else [])


def listener_tree(cfg, options, reactor, module):
    """The service tree of the listener of `module` when `worker_num` > 1.

    It binds `svr` and `monitor` and hands every connection to one of `worker_num` worker
    processes (network.handoff); like the original, only worker 0 rotates the log file.
    """
    from network.address import buffer_sizes
    from network.handoff import Listener, WorkerPool
    top = service_tree(cfg, options, reactor, max_size=0, keep=0)
    # the config as the listener read it, for every worker it starts (the file may change)
    env = dict(os.environ, **{WORKER_CONFIG: options["config_text"].decode("utf-8")})
    pool = WorkerPool(reactor, lambda index: worker_command(module, options, index),
                      cfg["worker_num"], name=module + " worker", env=env)
    Listener(reactor, cfg["svr"]["bind"], pool, lambda what: give_up(reactor, log, what),
             cfg["monitor"], name=module + " listener", buffers=buffer_sizes(cfg["svr"]),
             on_ready=mark_ready).setServiceParent(top)
    return top


def gateway_tree(options, reactor, module, build):
    """The service tree of the gateway `module` (accesshttp, accessws) run with `options`:
    its listener when `worker_num` > 1, one of its workers under `--worker N`, else the one
    process.  `build(listen, alerts)` makes the gateway's service, binding `svr` itself when
    `listen`, and returns it with the factory a worker's TCP connections go to when TLS is
    on (else None); a worker adopts connections into the service's `factory`.  `alerts` is
    false in a worker other than worker 0: the outages of what every worker connects to (the
    backends, the Kafka broker) raise one alert for the gateway, worker 0's, not one a
    worker.
    """
    cfg = options["loaded"]
    worker = options["worker"]
    if worker is None and cfg["worker_num"] > 1:
        return listener_tree(cfg, options, reactor, module)
    daemon, tls_factory = build(worker is None, not worker)
    if worker is not None:
        return worker_tree(cfg, options, reactor, daemon, daemon.factory, tls_factory)
    top = service_tree(cfg, options, reactor)
    daemon.setServiceParent(top)
    return top


def worker_tree(cfg, options, reactor, daemon, factory, tls_factory=None):
    """The service tree of a worker: `daemon` (its service, built with listening off) and
    the adoption of the listener's connections into `factory`, started after it.

    The worker stops when the listener goes away.
    """
    from network.handoff import Adopter
    index = options["worker"]
    top = service_tree(cfg, options, reactor, **({} if index == 0 else dict(max_size=0, keep=0)))
    daemon.setServiceParent(top)
    Adopter(reactor, factory, on_end=reactor.stop, tls_factory=tls_factory).setServiceParent(top)
    return top
