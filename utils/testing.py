# -*- test-case-name: utils.test.test_testing -*-
"""Helpers for integration tests that talk to the real MariaDB, Redis and Kafka broker.

`depends/services.py up` starts them and writes their addresses to
`depends/run/services.json`; these helpers read that file.  A test that needs a service
calls `require("mysql")` (or "redis", "sentinel", "kafka"): when the service does not answer
the test is skipped, or fails when VIABTC_REQUIRE_SERVICES=1 (as `make test` sets it), so
a broken setup can never pass silently.
"""

import itertools
import json
import os
import random
import socket
import subprocess
import sys
import time

from twisted.trial.unittest import SkipTest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICES_FILE = os.path.join(ROOT, "depends", "run", "services.json")

DEFAULTS = {
    "mysql": {"host": "127.0.0.1", "port": 3306, "user": "viabtc_test",
              "password": "viabtc_test",
              "databases": {"trade_log": "viabtc_test_trade_log",
                            "trade_history": "viabtc_test_trade_history",
                            "misc": "viabtc_test_misc"}},
    "redis": {"host": "127.0.0.1", "port": 6379},
    "sentinel": {"name": "viabtc-test", "addr": ["127.0.0.1:26479"]},
    "kafka": "127.0.0.1:19092",
}


def services():
    path = os.environ.get("VIABTC_SERVICES", SERVICES_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return DEFAULTS


def _host_port(name, info):
    if name == "kafka":
        host, port = info.split(",")[0].split(":")
    elif name == "sentinel":
        host, port = info["addr"][0].split(":")
    else:
        host, port = info["host"], info["port"]
    return host, int(port)


def answers(host, port, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def connect(port, patience=60.0, timeout=60.0):
    """A blocking connection to a daemon's loopback `port` once it listens (it may be
    recovering first), refused after `patience` seconds; `timeout` is the socket's."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def rpc_call(sock, command, body):
    """One binary RPC request on a blocking socket (`connect`): the reply's body, or None
    when the connection closed or nothing came within the socket's timeout."""
    from utils import rpc
    sock.sendall(rpc.encode(rpc.Packet(command, rpc.REQUEST, next(_sequences), 0, body)))
    decoder, packets = rpc.StreamDecoder(1 << 24), []
    while not packets:
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            return None
        if not data:
            return None
        packets = decoder.feed(data)
    return packets[0].body


_sequences = itertools.count(1)

def require(name):
    """Return the service's settings, or skip/fail the test when it does not answer."""
    info = services()[name]
    host, port = _host_port(name, info)
    if not answers(host, port):
        message = ("%s does not answer on %s:%d; run `python depends/services.py up`"
                   % (name, host, port))
        if os.environ.get("VIABTC_REQUIRE_SERVICES") == "1":
            raise AssertionError(message)
        raise SkipTest(message)
    return info


def mysql_connect_kwargs(database="misc"):
    """Keyword arguments for pymysql.connect to one of the test databases."""
    info = require("mysql")
    return dict(host=info["host"], port=int(info["port"]), user=info["user"],
                password=info["password"], database=info["databases"][database],
                charset="utf8mb4")


# ports handed out by free_port in this process, never handed out again
_given = set()


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return low, high


def free_port():
    """A loopback TCP port nobody listens on, for a server a test starts.

    It is taken outside the kernel's ephemeral range: a port from that range may be taken
    as the local end of any outgoing connection (of the server under test, or of anything
    else on the machine) before the server binds it, and a test that connects to it before
    the server listens may connect to itself.  A port is never handed out twice in a
    process, so the servers of one test never get the same one.
    """
    low, high = _ephemeral_range()
    candidates = [p for p in range(20000, 32768) if not low <= p <= high]
    if len(candidates) < 1000:
        candidates = [p for p in range(high + 1, 65536)]
    for port in random.sample(candidates, min(len(candidates), 200)):
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError("no free loopback port outside the ephemeral range %d-%d"
                       % (low, high))


def ended(pid):
    """Whether process `pid` (not a child of this one) has ended: gone, or a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def until(predicate, seconds=30, what="condition"):
    """Wait, on the running global reactor, until `predicate()` holds (checked every 20 ms);
    AssertionError naming `what` after `seconds`."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("%s not reached in %s s" % (what, seconds))


def proc_stat(pid):
    """The fields of /proc/<pid>/stat after the command name (the first is the state, field
    3 of proc(5)), or None when the process is gone (Linux)."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid):
    """The live (not zombie) processes whose parent is `pid` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(entry)
            if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def popen_done(args, **kwargs):
    """`subprocess.Popen(args, **kwargs)`, returned once its command line shows in /proc:
    Popen returns when the exec has begun, and on a busy machine the process's arguments
    were read empty a moment after."""
    process = subprocess.Popen(args, **kwargs)

    def shown():
        try:
            with open("/proc/%d/cmdline" % process.pid, "rb") as f:
                return f.read().split(b"\0")[:-1] == [os.fsencode(a) for a in args]
        except OSError:
            return process.poll() is not None
    if not wait_until(shown, 10, 0.001):
        process.kill()
        process.wait()
        raise RuntimeError("%r: no command line in /proc after 10 s" % (args,))
    return process


def wait_until(predicate, seconds, interval=0.05):
    """Poll a condition of a real outside process (integration tests only)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class KafkaBroker:
    """A private Kafka-compatible broker for tests that stop and restart one."""

    def __init__(self, port=None, advertise_port=None):
        self.port = port or free_port()
        self.advertise_port = advertise_port or self.port
        self.proc = None

    @property
    def address(self):
        return "127.0.0.1:%d" % self.advertise_port

    def start(self):
        require("kafka")  # the shared broker answering proves the binary works here
        script = os.path.join(ROOT, "depends", "services.py")
        self.proc = subprocess.Popen(
            [sys.executable, script, "broker", "--port", str(self.port),
             "--advertise-port", str(self.advertise_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        if not wait_until(lambda: answers("127.0.0.1", self.port), 20):
            self.stop()
            raise AssertionError("test broker did not start on port %d" % self.port)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class CuttableProxy:
    """A loopback TCP proxy on the reactor that a test can cut and restore.

    Cut, it refuses new connections and drops the open ones, which is how a client sees a
    server that went down; restored, it forwards again to a server that kept its state.
    `cut_at` cuts it at a chosen point of a conversation.
    """

    def __init__(self, target_port, port=None):
        self.target_port = target_port
        self.port = port or free_port()
        self.listening = None
        self.connections = set()
        self.armed = None

    def up(self):
        from twisted.internet import reactor
        from twisted.protocols import portforward

        proxy = self

        class Client(portforward.ProxyClient):
            def dataReceived(self, data):
                if self.peer.answer_held:
                    proxy.down()
                    return
                super().dataReceived(data)

        class ClientFactory(portforward.ProxyClientFactory):
            protocol = Client

        class Server(portforward.ProxyServer):
            clientProtocolFactory = ClientFactory
            answer_held = False

            def connectionMade(self):
                proxy.connections.add(self)
                super().connectionMade()

            def connectionLost(self, reason):
                proxy.connections.discard(self)
                super().connectionLost(reason)

            def dataReceived(self, data):
                if proxy.armed is None or proxy.armed[0] not in data:
                    super().dataReceived(data)
                    return
                forward = proxy.armed[1]
                proxy.armed = None
                if forward:
                    self.answer_held = True
                    super().dataReceived(data)
                else:
                    proxy.down()

        factory = portforward.ProxyFactory("127.0.0.1", self.target_port)
        factory.protocol = Server
        self.listening = reactor.listenTCP(self.port, factory, interface="127.0.0.1")
        return self

    def cut_at(self, marker, forward=True):
        """The next time a client sends `marker` (bytes, such as b"EXEC"), the proxy goes
        down (as `down`): once the server's answer to it comes, which the client never
        sees, or (not `forward`) at once, the server never seeing it."""
        self.armed = (marker, forward)

    def down(self):
        d = self.listening.stopListening() if self.listening else None
        self.listening = None
        for conn in list(self.connections):
            conn.transport.abortConnection()
            if conn.peer is not None:
                conn.peer.transport.abortConnection()
        self.connections.clear()
        return d


def create_database(label, scripts=("trade_log",), history_shards=False):
    """A fresh test database with the project's schema scripts run in it (and
    trade_history's shards when `history_shards`); returns its name.

    The caller drops it with `drop_database` (tests: `self.addCleanup(drop_database, name)`).
    """
    import uuid

    import pymysql
    info = require("mysql")
    name = "viabtc_test_%s_%s" % (label, uuid.uuid4().hex[:8])
    conn = pymysql.connect(host=info["host"], port=int(info["port"]), user=info["user"],
                           password=info["password"], autocommit=True, charset="utf8mb4")
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE `%s` CHARACTER SET utf8mb4" % name)
            cur.execute("USE `%s`" % name)
            for script in tuple(scripts) + (("trade_history_shards",) if history_shards
                                            else ()):
                with open(os.path.join(ROOT, "depends", "sql", script + ".sql")) as f:
                    text = f.read()
                lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
                for statement in "\n".join(lines).split(";"):
                    if statement.strip():
                        cur.execute(statement)
    finally:
        conn.close()
    return name


def drop_database(name):
    import pymysql
    info = require("mysql")
    conn = pymysql.connect(host=info["host"], port=int(info["port"]), user=info["user"],
                           password=info["password"], autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS `%s`" % name)
    finally:
        conn.close()


class DaemonProcess:
    """One of the project's daemons run by twistd in the foreground, for end-to-end tests.

    `config` (a dict) is written to `<workdir>/<module>.json`; the daemon runs in `workdir`
    (its relative log paths land there) and its output goes to `<workdir>/<module>.out`.
    """

    RUN_TWISTD = "from twisted.scripts.twistd import run; run()"

    def __init__(self, module, config, workdir):
        self.module = module
        self.workdir = workdir
        os.makedirs(os.path.join(workdir, "log"), exist_ok=True)
        self.config_path = os.path.join(workdir, module + ".json")
        with open(self.config_path, "w") as f:
            json.dump(config, f)
        self.proc = None

    def start(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        out = open(os.path.join(self.workdir, self.module + ".out"), "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.RUN_TWISTD, "--nodaemon", "--pidfile=",
             "--logfile=-", self.module, "--config", self.config_path],
            cwd=self.workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return self

    def wait_port(self, port, seconds=60):
        if not wait_until(lambda: answers("127.0.0.1", port) or self.proc.poll() is not None,
                          seconds) or self.proc.poll() is not None:
            raise AssertionError("%s did not come up on port %d; see %s" % (
                self.module, port, os.path.join(self.workdir, self.module + ".out")))
        return self

    def wait_exit(self, seconds):
        """The exit status of a daemon that ends by itself within `seconds`, else None."""
        try:
            return self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            return None

    def output(self):
        """What the daemon has written on stdout and stderr so far, as text lines."""
        with open(os.path.join(self.workdir, self.module + ".out"), "rb") as f:
            return f.read().decode("utf-8", "replace").splitlines()

    def stop(self, sig=None):
        import signal
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if sig is None else sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode if self.proc is not None else None
        self.proc = None
        return code


def base_config(module, **changes):
    """The module's shipped conf/config.json with `changes` applied (alert removed)."""
    with open(os.path.join(ROOT, module, "conf", "config.json")) as f:
        config = json.load(f)
    config.pop("alert", None)
    config["log"] = {"path": "log/" + module, "flag": "fatal,error,warn,info"}
    config.update(changes)
    return config


def mysql_section(database):
    info = require("mysql")
    return {"host": info["host"], "port": int(info["port"]), "user": info["user"],
            "pass": info["password"], "name": database}


def redis_command(db, *args):
    """Run one command on the test Redis in database `db`; returns the reply's first line,
    and for a bulk string the string's line after it."""
    info = require("redis")
    with socket.create_connection((info["host"], int(info["port"])), 5) as s:
        f = s.makefile("rwb")
        for command in (("SELECT", db), args):
            f.write(b"*%d\r\n" % len(command) + b"".join(
                b"$%d\r\n%s\r\n" % (len(a), a) for a in (str(x).encode() for x in command)))
            f.flush()
            line = f.readline()
        if line.startswith(b"$") and int(line[1:]) >= 0:
            line += f.read(int(line[1:]) + 2)
        return line


def redis_get(db, key):
    """The value of `key` in database `db` of the test Redis (text), or None."""
    header, _, value = redis_command(db, "GET", key).partition(b"\r\n")
    return None if header == b"$-1" else value[:-2].decode()


def kafka_record(brokers, topic, offset):
    """The value of the record at `offset` of partition 0 of `topic`."""
    from kafka import KafkaConsumer, TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=500).get(tp, []):
                if record.offset == offset:
                    return record.value
        raise AssertionError("no record at offset %d of %s" % (offset, topic))
    finally:
        consumer.close()


def clean_redis(test, db):
    """Empty Redis database `db` now and when `test` ends."""
    redis_command(db, "FLUSHDB")
    test.addCleanup(redis_command, db, "FLUSHDB")


def exchange_stores(test, label):
    """A Kafka broker and fresh trade_log and trade_history databases for `test`, removed
    when it ends; returns (broker address, log database, history database)."""
    broker = KafkaBroker().start()
    test.addCleanup(broker.stop)
    log_db = create_database(label + "log", ("trade_log",))
    test.addCleanup(drop_database, log_db)
    history_db = create_database(label + "hist", ("trade_history",), True)
    test.addCleanup(drop_database, history_db)
    return broker.address, log_db, history_db


def rpc_svr(port):
    """An RPC server section on a loopback port."""
    return {"bind": ["tcp@127.0.0.1:%d" % port], "max_pkg_size": 1000000,
            "heartbeat_check": False}


def exchange_configs(broker, log_db, history_db, redis, auth_url=None, **ports):
    """The config of every daemon of one exchange on free loopback ports, in start order.

    Returns a list of (module, config, port) where port is the daemon's main TCP port.
    `broker` is a KafkaBroker address, `log_db` and `history_db` are database names,
    `redis` the marketprice and alertcenter section (`{"name", "addr", "db"}`); `ports`
    pins some of them (`matchengine=7316`, ...).
    """
    names = ("matchengine", "readhistory", "accesshttp", "marketprice", "accessws",
             "alertcenter")
    port = {name: ports.get(name) or free_port() for name in names}
    backends = {name: {"name": name, "addr": ["tcp@127.0.0.1:%d" % port[name]],
                       "max_pkg_size": 2000000}
                for name in ("matchengine", "readhistory", "marketprice")}
    url = "http://127.0.0.1:%d/" % port["accesshttp"]
    auth_url = auth_url or "http://127.0.0.1:1/auth"

    def monitor():
        return {"bind": "tcp@127.0.0.1:%d" % free_port(), "max_pkg_size": 1024}

    configs = {
        "matchengine": base_config(
            "matchengine", svr=rpc_svr(port["matchengine"]),
            cli="tcp@127.0.0.1:%d" % free_port(), db_log=mysql_section(log_db),
            db_history=mysql_section(history_db), brokers=broker),
        "readhistory": base_config(
            "readhistory", svr=rpc_svr(port["readhistory"]),
            db_history=mysql_section(history_db)),
        "accesshttp": base_config(
            "accesshttp", svr={"bind": ["tcp@127.0.0.1:%d" % port["accesshttp"]],
                               "max_pkg_size": 102400},
            monitor=monitor(), **backends),
        "marketprice": base_config(
            "marketprice", svr=rpc_svr(port["marketprice"]),
            deals={"brokers": broker, "topic": "deals"}, redis=dict(redis), accesshttp=url,
            flush_interval=1.0),
        "accessws": base_config(
            "accessws", svr={"bind": ["tcp@127.0.0.1:%d" % port["accessws"]],
                             "max_pkg_size": 102400},
            monitor=monitor(), orders={"brokers": broker, "topic": "orders"},
            balances={"brokers": broker, "topic": "balances"},
            auth_url=auth_url, sign_url=auth_url, **backends),
        "alertcenter": base_config(
            "alertcenter", svr={"bind": ["tcp@127.0.0.1:%d" % port["alertcenter"],
                                         "udp@127.0.0.1:%d" % port["alertcenter"]],
                                "max_pkg_size": 10240},
            redis=dict(redis)),
    }
    return [(name, configs[name], port[name]) for name in names]


REFERENCE = os.path.join(ROOT, "depends", "reference")


def reference(name):
    """Path of a recorded reference file (`depends/reference/<name>`)."""
    return os.path.join(REFERENCE, name)


class WSClient:
    """A small blocking websocket client for end-to-end tests (text frames, masked).

    A close frame from the server is answered, its code kept in `close_code`, and `recv`
    raises ConnectionError.
    """

    close_code = None

    def __init__(self, host, port, path="/", protocol=None, timeout=5.0):
        import base64
        self.sock = socket.create_connection((host, port), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (host, port), "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " + key,
                 "Sec-WebSocket-Version: 13"]
        if protocol:
            lines.append("Sec-WebSocket-Protocol: " + protocol)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("handshake refused")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError("handshake refused: %r" % head[:100])

    def send(self, text):
        self._send_frame(0x1, text.encode() if isinstance(text, str) else text)

    def _send_frame(self, opcode, data):
        import struct
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(head + mask + masked)

    def _frame_end(self):
        """(start of the payload, end of the frame) of the whole frame at the start of the
        buffer; None while part of it has not come."""
        import struct
        buffer = self.buffer
        if len(buffer) < 2:
            return None
        n, at = buffer[1] & 0x7F, 2
        if n == 126 and len(buffer) >= 4:
            n, at = struct.unpack_from("!H", buffer, 2)[0], 4
        elif n == 127 and len(buffer) >= 10:
            n, at = struct.unpack_from("!Q", buffer, 2)[0], 10
        elif n >= 126:
            return None
        return (at, at + n) if len(buffer) >= at + n else None

    def pending(self):
        """Whether a whole frame is buffered (which a select on `sock` does not show)."""
        return self._frame_end() is not None

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError()
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError() from None
        if not chunk:
            raise ConnectionError("closed")
        self.buffer += chunk

    def recv(self, timeout=5.0):
        """The next text message (str); TimeoutError when none comes in time (a frame come
        in part stays buffered for the next call).  A ping is answered."""
        import struct
        deadline = time.monotonic() + timeout
        message = b""
        while True:
            frame = self._frame_end()
            if frame is None:
                self._fill(deadline)
                continue
            at, end = frame
            head, payload, self.buffer = self.buffer[0], self.buffer[at:end], self.buffer[end:]
            opcode = head & 0x0F
            if opcode == 8:
                # a close frame: its code kept, and answered as a client ends the close
                self.close_code = struct.unpack("!H", payload[:2])[0] if payload else None
                try:
                    self._send_frame(0x8, payload[:2])
                except OSError:
                    pass    # the server has dropped the connection already
                raise ConnectionError("closed by the server")
            if opcode == 9:
                self._send_frame(0xA, payload)
            if opcode in (9, 10):
                continue
            message += payload
            if head & 0x80:
                return message.decode()

    def close(self):
        self.sock.close()
