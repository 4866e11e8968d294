# -*- test-case-name: utils.test.test_watchdog -*-
"""Keeping a daemon alive, and the deployment folder's start, stop and check commands.

The original forks a keepalive parent that starts its worker again whenever it dies.  Here the
parent is `twistd watchdog`, a `twisted.runner.procmon` monitor running the module as a
foreground twistd child: a worker that dies is started again at once when it had lived for a
second, otherwise after a delay that doubles from 0.25 s up to 1 s.  SIGTERM or SIGQUIT to the
watchdog passes SIGTERM on to the worker and waits up to 60 s for it to flush and exit.  A
worker that was asked to stop (SIGTERM or SIGQUIT sent to it: it exits with status 0) is not
started again: the watchdog stops with it, as the original's keepalive parent does.  `stop`
also stops a worker whose watchdog was killed, and `start` refuses to start next to one.

A module's deployment folder (`bin/ conf/ log/ shell/`) holds:

- `log/<module>.pid`        the watchdog's pid (daemonized twistd)
- `log/<module>.worker.pid` the worker's pid
- `log/<module>.ready`      the worker's pid once it has started: its state loaded, its
  ports open (`utils.daemon.mark_ready`)
- `log/watchdog.log`        the watchdog's log, the worker's stdout and stderr included
  (what the worker prints before its own log is set up: a failure to start)

The worker logs per its config's `log` block alone (twistd's own log file of the worker is
/dev/null: it would hold the same lines again, unbounded).  Files are made with umask 022.
`start` first loads the config as the worker will, and refuses to start with the message
that names the file and key when it cannot be used.

A pid counts only when its process is this module's twistd watchdog or worker running in
this deployment folder: after a crash or a reboot a pid file may name another program's
process, or another deployment's.  Such a file is neither waited for nor signalled, and the
watchdog removes a stale worker pid file before each start of its worker (twistd would take
its process for a running worker and refuse to start, for ever).  When the module's config
has an `alert` section, the watchdog's own fatal lines (a worker that died, and how) go to
alertcenter as the daemon's do.

The shell scripts call this module:

    python -m utils.watchdog start   DIR MODULE [CONFIG]
    python -m utils.watchdog stop    DIR MODULE
    python -m utils.watchdog restart DIR MODULE [CONFIG]
    python -m utils.watchdog check   DIR MODULE [CONFIG]

`check` exits 0 and prints `up` when watchdog and worker run and every TCP address of the
config's `svr.bind` answers within 2 s (a heartbeat for the RPC daemons, a request for the
gateways; alertcenter's need only take the connection), or `up, starting` while the worker
has not finished starting (a matchengine replaying its log: restarting it would only start
that over); otherwise it prints why and exits 1.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

from twisted.application.service import MultiService, Service
from twisted.python import usage

from network.address import parse_address
from utils.config import ALERT, ConfigError, json_type, load_data
from utils.daemon import READY_FILE, TWISTD, stop_reactor

__all__ = ["Options", "make_monitor", "paths", "read_pid", "start", "stop", "check", "main"]

THRESHOLD = 1.0
MIN_RESTART_DELAY = 0.25
MAX_RESTART_DELAY = 1.0
KILL_TIME = 60.0
PROBE_TIMEOUT = 2.0     # seconds `check` waits for a connection, then for its answer


class Options(usage.Options):
    synopsis = "[options] MODULE [MODULE OPTIONS]"
    longdesc = ("Runs `twistd -n MODULE [MODULE OPTIONS]` as a child process and starts it "
                "again within a second whenever it dies.  SIGTERM stops the child (SIGTERM, "
                "then SIGKILL after --kill-time seconds) and then the watchdog.")
    optParameters = [
        ["worker-pidfile", None, None, "pid file of the child"],
        ["worker-logfile", None, None, "twistd log file of the child"],
        ["worker-readyfile", None, None, "where the child writes its pid once it has "
         "started (its state loaded, its ports open)"],
        ["kill-time", None, KILL_TIME, "seconds a stopping child gets before SIGKILL", float],
    ]

    def parseArgs(self, module, *args):
        self["module"] = module
        self["args"] = list(args)


def worker_command(module, args, pidfile=None, logfile=None, python=None):
    """The command line of a foreground twistd running `module`."""
    cmd = [python or sys.executable, "-c", TWISTD, "-n"]
    if pidfile:
        cmd += ["--pidfile", pidfile]
    if logfile:
        cmd += ["--logfile", logfile]
    return cmd + [module] + list(args)


def make_monitor(options, reactor=None):
    from twisted.internet import defer
    from twisted.internet.error import ProcessDone
    from twisted.runner.procmon import ProcessMonitor

    pid_file = options["worker-pidfile"]
    home = os.getcwd()

    class Monitor(ProcessMonitor):
        """Says in its log (critical) how a worker ended when nobody stopped it, and stops
        with a worker that was asked to stop (exit status 0: SIGTERM or SIGQUIT sent to the
        worker itself), as the original's keepalive parent exits with its child.  Its stop
        waits for the workers to end (ProcessMonitor's own only signals them, and the KILL
        it schedules would never come once the reactor has stopped)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self._ending = {}       # name: the Deferreds that fire when that worker ends

        def startProcess(self, name):
            if pid_file and name not in self.protocols:
                drop_stale_pidfile(pid_file, options["module"], "worker", home,
                                   out=lambda text: self.log.warn("{text}", text=text))
            super().startProcess(name)

        def stopService(self):
            """SIGTERM to every worker, SIGKILL to one still running `killTime` seconds
            later; the Deferred fires once every worker has ended, twistd waiting for it."""
            ends = []
            for name in list(self.protocols):
                d = defer.Deferred()
                self._ending.setdefault(name, []).append(d)
                ends.append(d)
            super().stopService()
            return defer.gatherResults(ends).addCallback(lambda _: None)

        def _monitoredProcessExited(self, name, reason=None):
            asked = self.running and reason is not None and reason.check(ProcessDone)
            if self.running and reason is not None and not asked:
                value = reason.value
                how = ("by signal %d" % value.signal if getattr(value, "signal", None)
                       else "with status %s" % getattr(value, "exitCode", "?"))
                self.log.critical("{name}: the worker ended {how}; starting it again",
                                  name=name, how=how)
            super()._monitoredProcessExited(name, reason)
            if asked:
                self.log.info("{name}: the worker stopped as asked; the watchdog stops too",
                              name=name)
                later = self.restart.get(name)
                if later is not None and later.active():
                    later.cancel()
                stop_reactor(reactor)
            for d in self._ending.pop(name, []):
                d.callback(None)

    if reactor is None:
        from twisted.internet import reactor
    monitor = Monitor(reactor=reactor)
    monitor.threshold = THRESHOLD
    monitor.minRestartDelay = MIN_RESTART_DELAY
    monitor.maxRestartDelay = MAX_RESTART_DELAY
    monitor.killTime = options["kill-time"]
    cmd = worker_command(options["module"], options["args"], options["worker-pidfile"],
                         options["worker-logfile"])
    env = dict(os.environ)
    env.pop(READY_FILE, None)
    if options["worker-readyfile"]:
        env[READY_FILE] = os.path.abspath(options["worker-readyfile"])
    monitor.addProcess(options["module"], cmd, env=env, cwd=home)
    return monitor


def alert_observer(options, reactor):
    """The observer that sends the watchdog's fatal lines to alertcenter, made from the
    `alert` section of the config in the worker's arguments (`--config PATH`); None when
    there is none or it cannot be read (the worker reports a broken config itself)."""
    from utils.alert import AlertLogObserver, AlertSender
    args = options["args"]
    path = None
    for i, word in enumerate(args):
        if word == "--config" and i + 1 < len(args):
            path = args[i + 1]
        elif word.startswith("--config="):
            path = word[len("--config="):]
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            alert = load_data(json.load(f)["alert"], ALERT, path)
    except (OSError, ValueError, TypeError, KeyError, ConfigError):
        return None
    return AlertLogObserver(AlertSender(reactor, alert.host, alert.addr))


class _Signals(Service):
    """The original keepalive parent's signals, once the reactor runs: SIGQUIT stops the
    watchdog and its worker as SIGTERM does; SIGTTIN, SIGTTOU and SIGUSR1 are ignored."""

    def __init__(self, reactor):
        self._reactor = reactor

    def startService(self):
        Service.startService(self)
        self._reactor.callWhenRunning(self._install)

    def _install(self):
        signal.signal(signal.SIGQUIT, self._received)
        for number in (signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
            signal.signal(number, signal.SIG_IGN)

    def _received(self, number, frame):
        self._reactor.callFromThread(stop_reactor, self._reactor)


def makeService(options):
    from twisted.internet import reactor
    from twisted.logger import globalLogPublisher
    observer = alert_observer(options, reactor)
    if observer is not None:
        globalLogPublisher.addObserver(observer)
    top = MultiService()
    make_monitor(options, reactor).setServiceParent(top)
    _Signals(reactor).setServiceParent(top)
    return top


# the deployment folder's commands

def paths(home, module):
    log = os.path.join(home, "log")
    return {"pid": os.path.join(log, module + ".pid"),
            "worker_pid": os.path.join(log, module + ".worker.pid"),
            "ready": os.path.join(log, module + ".ready"),
            "log": os.path.join(log, "watchdog.log")}


def read_pid(path):
    """The pid in the file at `path`, or None (no file, empty, not a number)."""
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _running(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of the caller counts as gone
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def is_daemon(pid, module, role, home=None):
    """Whether `pid` runs as `module`'s `role` ("watchdog" or "worker"): a twistd process
    with the module's name among its arguments, and "watchdog" among them for the watchdog
    alone, working in the folder `home` when one is given (one deployment's pid file may
    name another deployment's daemon by now).  A pid file that outlived its process (a
    crash, a reboot) may name another program's process by now, which is neither waited for
    nor signalled."""
    if not _running(pid):
        return False
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            words = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    if module not in words or not any("twistd" in word for word in words):
        return False
    if ("watchdog" in words) != (role == "watchdog"):
        return False
    if home is not None:
        try:
            cwd = os.readlink("/proc/%d/cwd" % pid)
        except PermissionError:
            return True         # another user's: only its arguments can tell
        except OSError:
            return False
        return os.path.realpath(cwd) == os.path.realpath(home)
    return True


def drop_stale_pidfile(path, module, role, home=None, out=None):
    """Remove the pid file `path` unless it names a running `role` of `module` (in `home`)
    other than this very process (a pid used again); whether it was removed.  A note goes
    to `out` (default stderr); a file without a pid in it is left for twistd to report."""
    pid = read_pid(path)
    if pid is None:
        return False
    if pid != os.getpid() and is_daemon(pid, module, role, home):
        return False
    note = out or (lambda text: print(text, file=sys.stderr))
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        note("cannot remove the stale pid file %s: %s" % (path, e.strerror or e))
        return False
    note("removed the stale pid file %s (pid %d is no %s)" % (
        path, pid, module if role == "worker" else module + " " + role))
    return True


def tcp_addresses(config_path):
    """The (host, port) of every `tcp@` address of the config's svr.bind (none without
    one); ValueError naming the key when the file holds something else there."""
    with open(config_path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError("the configuration must be a JSON object, got %s" % json_type(data))
    svr = data.get("svr", {})
    if not isinstance(svr, dict):
        raise ValueError("svr: expected an object, got %s" % json_type(svr))
    bind = svr.get("bind", [])
    bind = [bind] if isinstance(bind, str) else bind
    if not isinstance(bind, list):
        raise ValueError("svr.bind: expected an address or a list of addresses, got %s"
                         % json_type(bind))
    out = []
    for index, address in enumerate(bind):
        try:
            addr = parse_address(address)
        except ValueError as e:
            raise ValueError("svr.bind[%d]: %s" % (index, e)) from None
        if addr.kind == "tcp":
            out.append((addr.host or "127.0.0.1", addr.port))
    return out


def _probe(module):
    """What `check` sends a daemon's TCP port, to see that its reactor answers and not only
    that the kernel accepts connections for it: None to connect only (alertcenter, which
    answers nothing)."""
    if module in ("matchengine", "marketprice", "readhistory"):
        from utils import rpc
        return rpc.encode(rpc.heartbeat_request(3))
    if module == "accesshttp":
        # a method no backend has, answered (404, error 4) by the gateway itself, which
        # logs nothing for it (an envelope it refused was a line in its log at each check)
        body = b'{"id": 0, "method": "check_alive", "params": []}'
        return b"POST / HTTP/1.1\r\nHost: check\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body), body)
    if module == "accessws":
        # a websocket handshake, answered 101 (a plain GET was refused with a warning in
        # the log at each check)
        return (b"GET / HTTP/1.1\r\nHost: check\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n")
    return None


def _answers(host, port, probe, timeout=PROBE_TIMEOUT):
    """OSError unless (host, port) takes a connection and, with a `probe`, answers it."""
    with socket.create_connection((host, port), timeout) as sock:
        if probe is not None:
            sock.sendall(probe)
            if not sock.recv(1):
                raise OSError("the connection was closed unanswered")


def check(home, module, config=None):
    """(ok, message) about the daemon of the deployment folder `home`."""
    p = paths(home, module)
    pid = read_pid(p["pid"])
    if pid is None:
        return False, "%s: down (no pid file %s)" % (module, p["pid"])
    if not _running(pid):
        return False, "%s: down (watchdog pid %d is not running)" % (module, pid)
    if not is_daemon(pid, module, "watchdog", home):
        return False, "%s: down (pid %d of %s is not its watchdog: a stale pid file)" % (
            module, pid, p["pid"])
    worker = read_pid(p["worker_pid"])
    if not is_daemon(worker, module, "worker", home):
        return False, "%s: down (watchdog pid %d runs, its worker does not: restarting)" % (
            module, pid)
    if read_pid(p["ready"]) != worker:
        return True, ("%s: up, starting (watchdog pid %d, worker pid %d loading its state; "
                      "its ports open once it is ready)" % (module, pid, worker))
    config = config or os.path.join(home, "conf", "config.json")
    try:
        addresses = tcp_addresses(config)
    except (OSError, ValueError) as e:
        return False, "%s: cannot read %s: %s" % (module, config, e)
    probe = _probe(module)
    for host, port in addresses:
        try:
            _answers(host, port, probe)
        except OSError as e:
            return False, "%s: down (worker pid %d runs but %s:%d does not answer: %s)" % (
                module, worker, host, port, e.strerror or e)
    where = ", ".join("%s:%d" % a for a in addresses)
    return True, "%s: up (watchdog pid %d, worker pid %d%s)" % (
        module, pid, worker, ", port " + where if where else "")


def config_problem(home, module, config):
    """Why the worker would refuse `config` (read from `home`, as the worker reads it), in
    the words of the module's twistd options; None when it loads."""
    from twisted import plugins
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins
    for maker in getPlugins(IServiceMaker, plugins):
        if maker.tapname != module:
            continue
        cwd = os.getcwd()
        os.chdir(home)
        try:
            maker.options().parseOptions(["--config", config])
        except usage.UsageError as e:
            return str(e)
        finally:
            os.chdir(cwd)
        return None
    return "no daemon named %s" % module


def start(home, module, config=None, python=None):
    """Start watchdog and worker, daemonized; returns twistd's exit status."""
    p = paths(home, module)
    os.makedirs(os.path.dirname(p["pid"]), exist_ok=True)
    config = config or os.path.join("conf", "config.json")
    cmd = [python or sys.executable, "-c", TWISTD, "--pidfile", p["pid"], "--umask", "0022",
           "--logfile", p["log"], "watchdog", "--worker-pidfile", p["worker_pid"],
           "--worker-readyfile", p["ready"],
           "--worker-logfile", os.devnull, module, "--config", config]
    return subprocess.call(cmd, cwd=home)


def _orphan(home, module):
    """The pid in the worker pid file of `home` when it names a running worker of `module`
    there (one whose watchdog was killed, say), else None."""
    pid = read_pid(paths(home, module)["worker_pid"])
    return pid if is_daemon(pid, module, "worker", home) else None


def stop(home, module, wait=KILL_TIME + 10, out=print):
    """SIGTERM to the watchdog, then wait until it and its worker are gone; a worker left
    running by a killed watchdog gets the SIGTERM itself."""
    p = paths(home, module)
    pid = read_pid(p["pid"])
    worker = _orphan(home, module)
    if not is_daemon(pid, module, "watchdog", home):
        pid = worker
        if pid is None:
            out("%s: not running" % module)
            return True
        out("%s: the watchdog is gone; stopping its worker pid %d" % (module, pid))
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + wait
    while _running(pid) or _running(worker):
        if time.monotonic() > end:
            out("%s: pid %d did not stop within %d s" % (module, pid, wait))
            return False
        time.sleep(0.05)
    out("%s: stopped" % module)
    return True


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3 or argv[0] not in ("start", "stop", "restart", "check"):
        print("usage: python -m utils.watchdog start|stop|restart|check DIR MODULE [CONFIG]",
              file=sys.stderr)
        return 2
    command, home, module = argv[:3]
    config = argv[3] if len(argv) > 3 else None
    home = os.path.abspath(home)
    if command == "check":
        ok, message = check(home, module, config and os.path.join(home, config))
        print(message)
        return 0 if ok else 1
    if command in ("start", "restart"):
        # before anything is stopped: a config that cannot be used leaves the daemon as it is
        problem = config_problem(home, module, config or os.path.join("conf", "config.json"))
        if problem is not None:
            print("%s: not started: %s" % (module, problem), file=sys.stderr)
            return 1
    if command in ("stop", "restart"):
        if not stop(home, module):
            return 1
        if command == "stop":
            return 0
    if command in ("start", "restart"):
        p = paths(home, module)
        pid = read_pid(p["pid"])
        if is_daemon(pid, module, "watchdog", home):
            print("%s: already running (watchdog pid %d)" % (module, pid))
            return 1
        orphan = _orphan(home, module)
        if orphan is not None:
            print("%s: already running (worker pid %d, without its watchdog: stop it first)"
                  % (module, orphan))
            return 1
        if pid is not None:
            # a watchdog that was killed: its pid may name a process not yet reaped, or
            # another program's by now, which twistd would take for a running watchdog
            with contextlib.suppress(FileNotFoundError):
                os.remove(p["pid"])
        status = start(home, module, config)
        if status == 0:
            print("%s: started" % module)
        return status


if __name__ == "__main__":
    sys.exit(main())
