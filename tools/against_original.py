#!/usr/bin/env python
"""Send the same random requests to the original C daemon and to ours, and compare answers.

`matchengine`: both engines start on fresh databases with the same assets and markets; a
seeded stream of balance updates, limit and market orders, cancels and every query goes to
both, one request at a time, and each answer is compared: its JSON, and its text with the
times taken out (key order, number formats, the `debug` indentation).  With `--restarts N`
both daemons are stopped N times (after a `makeslice` with `--slice`) and started again:
their history tables are compared row by row, then every user's balances and orders, the
books, depth and summaries.  With `--bad-input` a third of the requests are spoiled (a
parameter missing, added, or of another type or value).

`readhistory`: both serve the same history database, filled first by our matchengine from
the same kind of stream; a seeded stream of every query, valid and spoiled, goes to both, and
the replies are compared byte for byte.

`marketprice`: both read the deals topic of one broker, fed by our matchengine with a
seeded minute or two of orders, and keep their k-lines in one private Redis (behind a
sentinel of its own); every query, valid and spoiled, goes to both, before and after both
restart from what they flushed.  The original opens a market's first buckets at 0 and
never reads a topic's first message (docs/marketprice.md): a first deal on a market left
out goes before all, and the open and low of the buckets holding each market's first deal
are not compared.

`accesshttp`: both gateways stand in front of our matchengine, readhistory and marketprice;
a seeded stream of HTTP requests goes to both: read-only calls and writes the engine refuses
(so that each changes nothing twice), a quarter with their JSON-RPC envelope spoiled, some
bodies not JSON, some not POSTed; status, Content-Type and body are compared.

`accessws`: both websocket servers stand in front of the same backends and read the same
topics, each with an auth service of its own (`AuthService`); a seeded stream of query frames
(a tenth spoiled) goes to both, then one of logins (every kind of answer of the auth service)
and of a user's queries and subscriptions, and what each asked its auth service is compared.
Then each subscribes to every public channel and rounds of trades follow.  Pushes go out on
timers, which can split the same changes over different pushes: what each client's pushes add
up to (the depth with every update applied, every deal, the last push of each other kind) is
compared.  Last, clients of each log in and subscribe to their orders and assets, and rounds
of trades and deposits follow: every `order.update`, and the number and last balance of the
`asset.update` pushes of each asset, are compared.  With `--workers N` the gateways (accesshttp
too) run N worker processes each.

`alertcenter`: both keep their alerts in one private Redis (a database each); a seeded
stream of alert lines goes to both, over UDP (a line a datagram, some with two, some not
alerts) and over TCP (several lines a connection, cut at random places, some not alerts,
too long, or without their newline), each followed by a line of the tool's whose arrival
shows the alerts before it kept; what each step added to the two lists is compared.

With `--kafka`, both matchengines get a broker of their own and their messages are compared
in order, times aside.

Inputs where the two differ on purpose (docs/matchengine.md, "Differences from the original")
are left out of the stream: non-finite numbers and exponents past 100, amounts past 34
digits, a `business` past 30 characters, a side past 32 bits, and with restarts a
`balance.update` change with more places than `prec_show`; with `--slice`, orders restored
from a slice are compared without their `source`, which the original's slice does not keep;
for accessws, user ids past 32 bits and codes that are not integers from the auth service
(docs/websocket.md), and the original's `state.update` pushes to a connection that took a
closed one's session slot; for alertcenter, NUL bytes and datagrams without a newline
(docs/alertcenter.md).

The original's executables are built from its sources (README, "Against the original").
Only one of each of its daemons runs on a machine at a time (each holds a lock file in
/tmp).  Needs `python depends/services.py up`.  Prints every difference and a summary; exit
status 1 when anything differed.

Usage: python tools/against_original.py matchengine --original PATH [--seed S] [--steps N]
           [--restarts N] [--slice] [--bad-input] [--precisions] [--kafka]
       python tools/against_original.py readhistory --original PATH [--seed S] [--steps N]
           [--fill N]
       python tools/against_original.py marketprice --original PATH [--seed S] [--steps N]
       python tools/against_original.py accesshttp --original PATH [--seed S] [--steps N]
           [--workers N]
       python tools/against_original.py accessws --original PATH [--seed S] [--steps N]
           [--rounds N] [--workers N]
       python tools/against_original.py alertcenter --original PATH [--seed S] [--steps N]
"""

import argparse
import contextlib
import decimal
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils import testing  # noqa: E402

TIMES = re.compile(rb'"(ctime|mtime|ftime|time|update_time|create_time)": ?[0-9.e+-]+')
# a message's times are its only JSON reals (amounts and prices are strings)
REALS = re.compile(rb'-?\d+\.\d+(e[+-]?\d+)?(?=[,\]}])')
SOURCE = re.compile(rb'"source": "(?:[^"\\]|\\.)*", ')
TIME_KEYS = {"ctime", "mtime", "ftime", "time", "update_time", "create_time"}
HISTORY_COLUMNS = {
    "balance_history": "user_id, asset, business, `change`, balance, detail",
    "order_history": "id, user_id, market, source, t, side, price, amount, taker_fee, "
                     "maker_fee, deal_stock, deal_money, deal_fee",
    "order_detail": "id, user_id, market, source, t, side, price, amount, taker_fee, "
                    "maker_fee, deal_stock, deal_money, deal_fee",
    "deal_history": "user_id, deal_id, order_id, deal_order_id, role, price, amount, deal, "
                    "fee, deal_fee",
    "user_deal_history": "user_id, market, deal_id, order_id, deal_order_id, side, role, "
                         "price, amount, deal, fee, deal_fee",
}
# --precisions: markets whose stock, money and fee places differ from the shipped ones
PRECISION_ASSETS = [{"name": "BCH", "prec_save": 20, "prec_show": 8},
                    {"name": "BTC", "prec_save": 12, "prec_show": 8},
                    {"name": "LTC", "prec_save": 10, "prec_show": 4}]
PRECISION_MARKETS = [
    {"name": "BTCBCH", "stock": {"name": "BTC", "prec": 8}, "money": {"name": "BCH", "prec": 8},
     "min_amount": "0.001"},
    {"name": "LTCBCH", "stock": {"name": "LTC", "prec": 4}, "money": {"name": "BCH", "prec": 6},
     "fee_prec": 2, "min_amount": "0.01"},
    {"name": "LTCBTC", "stock": {"name": "LTC", "prec": 3}, "money": {"name": "BTC", "prec": 5},
     "fee_prec": 3, "min_amount": "0.5"}]
ASSETS = ["BTC", "BCH", "LTC"]
FEES = ["0", "0.001", "0.002", "0.0015", "0.12345678", "0.1", "0.00001", "0.3"]
POOR_USER = 7
USERS = [1, 2, 3, 4, POOR_USER]
SPOILT = ["-1", "0", "1e5", "1E-3", " 1", "1 ", "0x10", "+1", "", "abc", "1.2.3", "-0",
          "00001.5", ".5", "5.", "0.0000000001", "-0.0001", "1,5", "\u0661", "1_000",
          "0." + "0" * 30 + "1", 1, 1.5, None, [], {}, True, 0, -1, 1 << 32, 1 << 64,
          -(1 << 63), 1 << 31, 4294967295, 1e20, "NOPE", "btcbch", "BTC", "x" * 200]


def spoil(rng, params, missing, added):
    """`params` with one of them taken out (a draw below `missing`), one more added (below
    `added`), or one replaced by a wrong type or value."""
    x = rng.random()
    if x < missing and params:
        params.pop(rng.randrange(len(params)))
    elif x < added:
        params.append(rng.choice(SPOILT))
    elif params:
        params[rng.randrange(len(params))] = rng.choice(SPOILT)
    return params


class Requests:
    """A seeded stream of matchengine requests: (command, params)."""

    def __init__(self, seed, markets, bad_input=False, restarts=False):
        self.rng = random.Random(seed)
        self.markets = markets
        self.bad_input = bad_input
        self.restarts = restarts
        self.open_orders = []           # (user, market, order id)
        self.business_id = 0
        self.pending = [(102, [user, asset, "deposit", 1000 + user * 10 + n, amount, {}])
                        for user in USERS[:-1]
                        for n, (asset, amount) in enumerate(
                            [("BTC", "1000.123456789"), ("BCH", "100000.5"), ("LTC", "5000")])]

    def number(self, low, high):
        rng = self.rng
        places = rng.choice([0, 0, 1, 2, 3, 4, 8, 8, 12, rng.randrange(0, 16)])
        text = str(rng.randrange(low, high))
        return text + "." + "".join(str(rng.randrange(10)) for _ in range(places)) \
            if places else text

    def price(self):
        if self.rng.random() < 0.7:
            return "%d.%02d" % (self.rng.randrange(95, 106), self.rng.randrange(0, 100))
        return self.number(0, 200)

    def amount(self):
        if self.rng.random() < 0.6:
            return "%d.%03d" % (self.rng.randrange(0, 5), self.rng.randrange(0, 1000))
        return self.number(0, 10)

    def plain(self):
        if self.pending:
            return self.pending.pop(0)
        rng = self.rng
        user, market = rng.choice(USERS[:-1]), rng.choice(self.markets)
        x = rng.random()
        if x < 0.40:
            return 201, [user, market, rng.choice([1, 2]), self.amount(), self.price(),
                         rng.choice(FEES), rng.choice(FEES), rng.choice(["", "web", "x" * 31])]
        if x < 0.55:
            side = rng.choice([1, 2])
            return 202, [user, market, side, self.amount() if side == 1 else self.number(0, 300),
                         rng.choice(FEES), "api"]
        if x < 0.65 and self.open_orders:
            owner, market, order_id = rng.choice(self.open_orders)
            return 204, [owner if rng.random() < 0.8 else user, market, order_id]
        if x < 0.72:
            self.business_id += 1
            change = self.number(0, 50)
            return 102, [user, rng.choice(ASSETS), rng.choice(["deposit", "withdraw", "trade"]),
                         self.business_id, "-" + change if rng.random() < 0.3 else change,
                         {"k": rng.randrange(10)}]
        if x < 0.76:
            return 101, [user] + rng.sample(ASSETS, rng.randrange(0, 3))
        if x < 0.80:
            return 203, [user, market, rng.randrange(0, 3), rng.choice([1, 10, 100])]
        if x < 0.84:
            return 205, [market, rng.choice([1, 2]), rng.randrange(0, 3),
                         rng.choice([1, 10, 100])]
        if x < 0.90:
            return 206, [market, rng.choice([1, 5, 50]),
                         rng.choice(["0", "0.1", "1", "0.01", "10", "0.00000001", "3"])]
        if x < 0.93 and self.open_orders:
            return 207, rng.choice(self.open_orders)[1:]
        if x < 0.96:
            return 105, rng.sample(ASSETS, rng.randrange(0, 3))
        if x < 0.98:
            return 308, rng.sample(self.markets, rng.randrange(0, 2))
        return rng.choice([(104, []), (307, [])])

    def spoilt(self, command, params):
        rng = self.rng
        if rng.random() < 0.1 and command in (102, 201):
            params[0] = POOR_USER           # a user with little or nothing
            if command == 102:
                params[4] = self.number(0, 3)
            return params
        if rng.random() > 0.3:
            return params
        return spoil(rng, params, 0.15, 0.25)

    @staticmethod
    def departs(command, params):
        """Whether the request is one where the two differ on purpose (see the module)."""
        for value in params:
            if isinstance(value, str) and far_number(value):
                return True
        if command in (201, 202, 205):
            at = 1 if command == 205 else 2
            side = params[at] if len(params) > at else None
            if type(side) is int and side not in (1, 2) and side & 0xFFFFFFFF in (1, 2):
                return True
        if command == 102 and len(params) > 4:
            business, change = params[2], params[4]
            if isinstance(business, str) and len(business) > 30:
                return True
            # a credit whose sum a balance cannot hold at prec_save (BCH's 20 places: 14
            # integer digits)
            if isinstance(change, str) and len(change.split(".")[0].lstrip("+-0")) > 14:
                return True
        return False

    def restartable(self, command, params):
        """A balance.update change cut to 4 places, the fewest of any asset's prec_show:
        the original replays a change at prec_save."""
        if command == 102 and len(params) > 4 and isinstance(params[4], str) \
                and "." in params[4]:
            whole, places = params[4].split(".", 1)
            params[4] = whole + "." + places[:4] if places[:4] else whole
        return params

    def next(self):
        while True:
            command, params = self.plain()
            if self.bad_input and not self.pending:
                params = self.spoilt(command, list(params))
            if self.restarts:
                params = self.restartable(command, params)
            if not self.departs(command, params):
                return command, params

    def learn(self, command, params, reply):
        result = reply.get("result")
        if command == 201 and isinstance(result, dict) and result.get("left") not in ("0", None):
            self.open_orders.append((params[0], params[1], result["id"]))


# a malformed number raises, whatever the thread's current context says
STRICT = decimal.Context(traps=[decimal.InvalidOperation])


def far_number(text):
    """True for a number the two read differently on purpose: not finite, an exponent past
    100 either way, or more than 34 digits; False otherwise (None: not a number at all)."""
    try:
        value = decimal.Decimal(text, STRICT)
    except decimal.InvalidOperation:
        return None
    if not value.is_finite():
        return True
    digits, exponent = value.as_tuple()[1:]
    return abs(exponent) > 100 or len(digits) > 34


def without_times(value, drop=()):
    if isinstance(value, dict):
        return {k: without_times(v, drop) for k, v in value.items()
                if k not in TIME_KEYS and k not in drop}
    if isinstance(value, list):
        return [without_times(v, drop) for v in value]
    return value


class Daemon:
    """One side of the comparison: a daemon's processes and its RPC connection.  The
    original's daemonize themselves (a new session, a watchdog and its worker): they are told
    by their working directory, each side's own."""

    def __init__(self, label, argv, workdir, port, env=None):
        self.label, self.argv, self.workdir, self.port = label, argv, workdir, port
        self.env = env
        self.process = self.sock = None

    def start(self):
        self.process = subprocess.Popen(self.argv, cwd=self.workdir, env=self.env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        try:
            self.sock = testing.connect(self.port, timeout=10)
        except ConnectionRefusedError:
            raise SystemExit("against_original: the %s %s does not listen; the end of its "
                             "logs:\n%s" % (self.label, self.argv[-3 if self.label == "ours"
                                                                  else 0], self.log_tail()))

    def log_tail(self):
        lines = []
        for directory, _, files in os.walk(self.workdir):
            for name in files:
                if name.endswith(".log") or "log" in directory:
                    with open(os.path.join(directory, name), errors="replace") as f:
                        lines += f.read().splitlines()[-10:]
        return "\n".join(lines)

    def call(self, command, body):
        # None: the connection closed (the answer to a body that is not JSON) or nothing
        # came within 10 seconds
        reply = testing.rpc_call(self.sock, command, body)
        if reply is None:
            self.sock.close()
            self.sock = testing.connect(self.port, timeout=10)
        return reply

    def pids(self):
        """The processes running in this side's directory (the original's rename themselves,
        and run in a session of their own), or in our daemon's session."""
        found, here = [], os.path.realpath(self.workdir)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cwd = os.readlink("/proc/%s/cwd" % entry)
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and (cwd == here or int(fields[3]) == self.process.pid):
                found.append(int(entry))
        return found

    def stop(self, sig=signal.SIGTERM):
        """Stop the daemon (ours: its main process, which stops its writer) and wait until
        none of its processes is left; SIGKILL after a minute."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.process is None:
            return
        targets = [self.process.pid] if self.label == "ours" else self.pids()
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):      # it has just ended
                os.kill(pid, sig)
        deadline = time.monotonic() + 60
        while self.pids():
            self.process.poll()
            if time.monotonic() > deadline:
                for pid in self.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        self.process.wait()
        self.process = None


def ours(module, config_path, workdir, port):
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "--logfile=" + os.path.join(workdir, "twistd.log"),
            module, "--config", config_path]
    return Daemon("ours", argv, workdir, port, dict(os.environ, PYTHONPATH=ROOT))


def original_sections(module):
    """What every daemon of the original needs besides its own keys: process limits it can
    set unprivileged, and an alert section (a UDP port that nothing reads)."""
    return {"process": {"file_limit": 10000, "core_limit": 0},
            "alert": {"host": module, "addr": "127.0.0.1:%d" % testing.free_port()}}


def write_configs(module, base, workdir, common, original_changes, our_changes):
    """Each side's config file and port: [(label, path, port)]."""
    out = []
    original_changes = dict(original_changes, **original_sections(module))
    for label, changes in (("original", original_changes), ("ours", our_changes)):
        directory = os.path.join(workdir, label)
        os.makedirs(os.path.join(directory, "log"))
        cfg = json.loads(json.dumps(base))
        cfg.pop("alert", None)
        port = testing.free_port()
        cfg.update(common)
        cfg.update({"debug": True,     # indented replies: their text is compared too
                    "log": {"path": os.path.join(directory, "log", module),
                            "flag": "fatal,error,warn,info"},
                    "svr": {"bind": ["tcp@127.0.0.1:%d" % port], "max_pkg_size": 1 << 20,
                            "heartbeat_check": False, "buf_limit": 100}})
        cfg.update(changes)
        path = os.path.join(directory, "config.json")
        with open(path, "w") as f:
            json.dump(cfg, f, indent=1)
        out.append((directory, path, port))
    return out


def mysql_config(name, for_original):
    info = testing.require("mysql")
    section = {"host": info["host"], "port": int(info["port"]), "user": info["user"],
               "pass": info["password"], "name": name}
    if for_original:        # the original's config has no port: the default one
        section.pop("port")
    return section


class Comparison:
    """Answers compared, and counted by command and outcome; each difference is printed by
    `out` and kept in `found` as (what differed, the request)."""

    def __init__(self, out=print):
        self.out = out
        self.found = []
        self.counts = {}
        # keys left out of every answer: once a slice was loaded, "source" (the original's
        # slice does not keep it, and leaves it out of the orders it restored)
        self.drop = ()

    def differ(self, what, request, original, ours):
        self.found.append((what, request))
        self.out("DIFFERENT %s: %s" % (what, request))
        self.out("  original: %s" % (original[:1500] if original is not None else "closed"))
        self.out("  ours:     %s" % (ours[:1500] if ours is not None else "closed"))

    def compare(self, command, params, original, ours):
        request = "%d %s" % (command, json.dumps(params))
        drop = self.drop
        code = None
        if original is None or ours is None:
            if original is not ours:
                self.differ("answer", request, original, ours)
            code = "closed"
        else:
            a, b = json.loads(original), json.loads(ours)
            code = (a.get("error") or {}).get("code")
            if without_times(a, drop) != without_times(b, drop):
                self.differ("answer", request, original, ours)
            elif not drop and TIMES.sub(b"T", original) != TIMES.sub(b"T", ours):
                self.differ("text", request, original, ours)
        self.counts[command, code] = self.counts.get((command, code), 0) + 1

    def summary(self):
        out = self.out
        out("compared, by command: answered (result), error code or HTTP status, "
            "connection closed")
        # commands by number, then what has a name ("cli", "pushes")
        for command in sorted({command for command, _ in self.counts},
                              key=lambda c: (type(c) is str, str(c) if type(c) is str else c)):
            kinds = sorted(((code, n) for (c, code), n in self.counts.items() if c == command),
                           key=str)
            out("  %s: %s" % (command, ", ".join(
                "%d %s" % (n, "result" if code is None else code if isinstance(code, str)
                           else "error %s" % code) for code, n in kinds)))
        out("%d differences" % len(self.found))
        return 1 if self.found else 0


def history_rows(cursor, database):
    rows = {}
    for table, columns in HISTORY_COLUMNS.items():
        found = []
        for shard in range(100):
            cursor.execute("SELECT %s FROM `%s`.`%s_%d`" % (columns, database, table, shard))
            found += [tuple(str(v) for v in row) for row in cursor.fetchall()]
        rows[table] = sorted(found)
    return rows


def compare_history(comparison, databases, sliced):
    import pymysql
    info = testing.require("mysql")
    conn = pymysql.connect(host=info["host"], port=int(info["port"]), user=info["user"],
                           password=info["password"], charset="utf8mb4")
    try:
        with conn.cursor() as cursor:
            original, ours = (history_rows(cursor, name) for name in databases)
    finally:
        conn.close()
    for table in HISTORY_COLUMNS:
        a, b = original[table], ours[table]
        if sliced and table in ("order_history", "order_detail"):
            # the original writes the source of an order restored from a slice as "(null)"
            a, b = ([row[:3] + row[4:] for row in rows] for rows in (a, b))
        if a != b:
            only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
            comparison.differ("history %s" % table, "%d and %d rows" % (len(a), len(b)),
                              repr(only_a[:5]), repr(only_b[:5]))
        else:
            comparison.out("history %s: %d rows, the same" % (table, len(a)))


def run_matchengine(args):
    with open(os.path.join(ROOT, "matchengine", "conf", "config.json")) as f:
        base = json.load(f)
    if args.precisions:
        base["assets"], base["markets"] = PRECISION_ASSETS, PRECISION_MARKETS
    markets = [m["name"] for m in base["markets"] if m["stock"]["name"] in ASSETS
               and m["money"]["name"] in ASSETS]
    databases = [testing.create_database(label, ("trade_log",)) if label.endswith("log")
                 else testing.create_database(label, ("trade_history",), True)
                 for label in ("orig_log", "orig_history", "ours_log", "ours_history")]
    workdir = tempfile.mkdtemp(prefix="against-original-")
    brokers = []
    try:
        if args.kafka:      # a broker of its own for each
            brokers = [testing.KafkaBroker().start() for _ in range(2)]
            original_broker, our_broker = (broker.address for broker in brokers)
        else:               # the original's messages are not read: nothing listens there
            original_broker = "127.0.0.1:%d" % testing.free_port()
            our_broker = testing.require("kafka")
        (odir, opath, oport), (udir, upath, uport) = write_configs(
            "matchengine", base, workdir, {"slice_interval": 3600, "slice_keeptime": 259200},
            {"db_log": mysql_config(databases[0], True),
             "db_history": mysql_config(databases[1], True), "brokers": original_broker,
             "cli": "tcp@127.0.0.1:%d" % testing.free_port()},
            {"db_log": mysql_config(databases[2], False),
             "db_history": mysql_config(databases[3], False), "brokers": our_broker,
             "durable": True, "cli": "tcp@127.0.0.1:%d" % testing.free_port()})
        original = Daemon("original", [args.original, opath], odir, oport)
        mine = ours("matchengine", upath, udir, uport)
        comparison = Comparison()
        requests = Requests(args.seed, markets, args.bad_input, args.restarts > 0)
        sliced = False
        try:
            original.start()
            mine.start()
            for rounds in range(args.restarts + 1):
                for _ in range(args.steps):
                    command, params = requests.next()
                    if command == 206:
                        time.sleep(0.46)    # the original answers depth from a cache of 0.45 s
                    body = json.dumps(params).encode()
                    a, b = original.call(command, body), mine.call(command, body)
                    comparison.compare(command, params, a, b)
                    if a is not None:
                        requests.learn(command, params, json.loads(a))
                if args.kafka:
                    time.sleep(2)       # the original sends its messages on a timer
                compare_cli(comparison, (opath, upath))
                if rounds == args.restarts:
                    break
                if args.slice:
                    for path in (opath, upath):
                        cli_answer(cli_port(path), b"makeslice", first=10)   # "OK"
                    time.sleep(3)           # both slices written
                    sliced = True
                    comparison.drop = ("source",)
                original.stop(signal.SIGQUIT)
                mine.stop()
                compare_history(comparison, (databases[1], databases[3]), sliced)
                original.start()
                mine.start()
                print("restarted (%d of %d)" % (rounds + 1, args.restarts))
                for command, params in state_queries(markets):
                    body = json.dumps(params).encode()
                    comparison.compare(command, params, original.call(command, body),
                                       mine.call(command, body))
            original.stop(signal.SIGQUIT)
            mine.stop()
            compare_history(comparison, (databases[1], databases[3]), sliced)
            if args.kafka:
                compare_messages(comparison, *brokers)
        finally:
            original.stop(signal.SIGKILL)
            mine.stop()
        return comparison.summary()
    finally:
        for broker in brokers:
            broker.stop()
        for name in databases:
            testing.drop_database(name)
        shutil.rmtree(workdir, ignore_errors=True)


# lines to the CLI of each (none that changes anything); the numbers of ids are read as the
# original reads them (strtoul)
CLI_LINES = [b"status", b"balance list", b"balance list BTC", b"balance list NOPE",
             b"balance get 1", b"balance get 2", b"balance get 99", b"balance get",
             b"balance get x", b"balance get 1 2", b"balance get 0x2", b"balance get 010",
             b"balance get -4294967295", b"balance get 4294967297", b"balance summary",
             b"balance", b"balance nope", b"market summary", b"market", b"market nope",
             b"help", b"nope", b"", b"   ", b'"balance" "get" 1', b"'balance' 'list' BTC",
             b'"bal\\x61nce" summary', b'balance "get 1', b'"balance"get 1',
             b"balance get '1'x", b"BALANCE summary", b"balance\tget\t2"]
# the original writes these lines in the order of its hash tables
CLI_UNORDERED = (b"help", b"balance list", b"'balance' 'list'")
CLI_PENDING = re.compile(rb"^((?:operlog|history|message \w+) pending:?) \d+$", re.M)


def cli_port(path):
    """The loopback port of the CLI of the matchengine configured at `path`."""
    with open(path) as f:
        return int(json.load(f)["cli"].rsplit(":", 1)[1])


def cli_answer(port, line, first=0.3):
    """What the CLI on `port` writes for `line`: what comes within `first` seconds, then
    until 0.3 s pass without a byte."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(line + b"\n")
        sock.settimeout(first)
        answer = b""
        while True:
            try:
                data = sock.recv(1 << 16)
            except socket.timeout:
                return answer
            if not data:
                return answer
            answer += data
            sock.settimeout(0.3)


def compare_cli(comparison, paths):
    """Every line of CLI_LINES to the CLI of each (their configs at `paths`): the answers
    compared as text, those in the order of the original's hash tables as sorted lines,
    and of `status` what is pending not counted (the two write their logs differently)."""
    ports = [cli_port(path) for path in paths]
    for line in CLI_LINES:
        a, b = (cli_answer(port, line) for port in ports)
        if line.startswith(CLI_UNORDERED):
            a, b = (sorted(text.splitlines()) for text in (a, b))
        elif line == b"status":
            a, b = (CLI_PENDING.sub(rb"\1 N", text) for text in (a, b))
        key = ("cli", "%s %s" % (line.split(b" ")[0].decode(errors="replace") or "(empty)",
                                 "answered" if a else "(nothing)"))
        comparison.counts[key] = comparison.counts.get(key, 0) + 1
        if a != b:
            comparison.differ("cli", repr(line), repr(a), repr(b))


def topic_messages(address, topic):
    """A topic's messages on the broker at `address`, each with its times (its JSON reals)
    taken out."""
    from kafka import KafkaConsumer, TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=address, enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        return [REALS.sub(b"T", record.value) for record in consumer]
    finally:
        consumer.close()


def compare_messages(comparison, original, ours):
    for topic in ("deals", "orders", "balances"):
        a, b = topic_messages(original.address, topic), topic_messages(ours.address, topic)
        if "source" in comparison.drop:
            a, b = ([SOURCE.sub(b"", message) for message in messages] for messages in (a, b))
        if a == b:
            comparison.out("messages %s: %d, the same" % (topic, len(a)))
            continue
        at = next((n for n, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        comparison.differ("messages %s" % topic,
                          "%d and %d messages, the first difference at %d" % (len(a), len(b), at),
                          a[at] if at < len(a) else None, b[at] if at < len(b) else None)


def state_queries(markets):
    for user in USERS:
        yield 101, [user]
        for market in markets:
            yield 203, [user, market, 0, 100]
    for market in markets:
        for side in (1, 2):
            yield 205, [market, side, 0, 100]
        yield 206, [market, 100, "0"]      # the first since the start: not from a cache
    yield 105, []
    yield 308, []


class Queries:
    """A seeded stream of readhistory queries over what a history database holds."""

    def __init__(self, seed, order_ids, times):
        self.rng = random.Random(seed)
        self.order_ids = order_ids + [0, 123456789]
        self.times = times or [1.0]

    def time(self):
        rng = self.rng
        x = rng.random()
        if x < 0.3:
            return 0
        if x < 0.8:
            return rng.choice(self.times) + rng.choice([-0.5, 0, 0.0000001, 1, -1])
        return rng.choice([1, -5, 1.5, 1e12, int(rng.choice(self.times))])

    def next(self):
        rng = self.rng
        user = rng.choice(USERS + [0, 5, 101, (1 << 32) + 1, -1])
        market = rng.choice(["BTCBCH", "LTCBCH", "", "NOPE", 1, None])
        offset = rng.choice([0, 0, 0, 1, 3, 10, 1000, -1])
        limit = rng.choice([1, 2, 10, 100, 101, 102, 0, -1, 5])
        command = rng.choice([103, 208, 209, 210, 306])
        if command == 103:
            params = [user, rng.choice(["", "BTC", "BCH", "LTC", "NOPE", 5, None]),
                      rng.choice(["", "deposit", "trade", "withdraw", "x", 3]),
                      self.time(), self.time(), offset, limit]
        elif command == 208:
            params = [user, market, self.time(), self.time(), offset, limit]
            if rng.random() < 0.5:
                params.append(rng.choice([0, 1, 2, 3, -1]))
        elif command == 209:
            params = [rng.choice(self.order_ids), offset, limit]
        elif command == 210:
            params = [rng.choice(self.order_ids)]
        else:
            params = [user, market, offset, limit]
        if rng.random() < 0.2:
            spoil(rng, params, 0.3, 0.5)
        return command, params


def run_readhistory(args):
    with Exchange(("matchengine", "readhistory"),
                  readhistory={"debug": True, "worker_num": 2}) as exchange:
        print("filling the history: %d requests to our matchengine" % args.fill)
        engine = exchange.daemons["matchengine"]
        requests = Requests(args.seed, ["BTCBCH", "LTCBCH"])
        for _ in range(args.fill):
            command, params = requests.next()
            reply = engine.call(command, json.dumps(params).encode())
            requests.learn(command, params, json.loads(reply))
        engine.stop()           # every history row written
        history = exchange.databases[1]
        import pymysql
        info = testing.require("mysql")
        conn = pymysql.connect(host=info["host"], port=int(info["port"]), user=info["user"],
                               password=info["password"], database=history)
        order_ids, times = [], []
        with conn.cursor() as cursor:
            for shard in range(100):
                cursor.execute("SELECT id, create_time FROM order_history_%d" % shard)
                for order_id, created in cursor.fetchall():
                    order_ids.append(order_id)
                    times.append(created)
        conn.close()
        original = exchange.start_original(args.original, "readhistory", {
            "debug": True, "worker_num": 2,
            "svr": {"buf_limit": 100, "max_pkg_size": 1 << 20, "heartbeat_check": False},
            "db_history": mysql_config(history, True)})
        mine = exchange.daemons["readhistory"]
        comparison = Comparison()
        queries = Queries(args.seed, sorted(order_ids), sorted(times))
        for _ in range(args.steps):
            command, params = queries.next()
            body = json.dumps(params).encode()
            comparison.compare(command, params, original.call(command, body),
                               mine.call(command, body))
        return comparison.summary()


class PrivateRedis:
    """A Redis server and a sentinel watching it, on free ports, for this run alone: the
    original's marketprice writes into database 0 of the sentinel's master."""

    NAME = "against-original"

    def __init__(self, workdir):
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("against_original: marketprice needs redis-server on the PATH")
        self.port, sentinel_port = testing.free_port(), testing.free_port()
        self.sentinel = {"name": self.NAME, "addr": ["127.0.0.1:%d" % sentinel_port]}
        conf = os.path.join(workdir, "sentinel.conf")
        with open(conf, "w") as f:
            f.write("bind 127.0.0.1\nport %d\ndaemonize no\nsentinel monitor %s 127.0.0.1 %d 1\n"
                    % (sentinel_port, self.NAME, self.port))
        self.processes = [
            subprocess.Popen([server, "--bind", "127.0.0.1", "--port", str(self.port), "--save",
                              "", "--appendonly", "no"], stdout=subprocess.DEVNULL,
                             start_new_session=True),
            subprocess.Popen([server, conf, "--sentinel"], stdout=subprocess.DEVNULL,
                             start_new_session=True)]
        for port in (self.port, sentinel_port):
            if not testing.wait_until(lambda: testing.answers("127.0.0.1", port), 20):
                self.stop()
                raise SystemExit("against_original: redis-server did not come up")

    def stop(self):
        for process in self.processes:
            process.terminate()
            process.wait()


def mask_first_buckets(command, params, body, first):
    """The answer with what the original's first buckets change masked: it opens a market's
    first bucket at 0 (the market's last price before any deal, docs/marketprice.md), where
    ours opens it at the first price, so that bucket's open and low differ, and so do those
    of every merge holding it.  `first` is the time of the markets' first deals."""
    if body is None:
        return None
    answer = json.loads(body)
    result = answer.get("result")
    if command == 302 and isinstance(result, list):
        interval = params[3]
        for row in result:
            if row[0] <= first < row[0] + interval:
                row[1] = row[4] = "masked"
    elif command in (301, 305) and isinstance(result, dict):
        if command == 305 or type(params[1]) is int and time.time() - params[1] <= first + 60:
            result["open"] = result["low"] = "masked"
    return json.dumps(answer, indent=4).encode()


class Exchange:
    """Our daemons `modules` of one exchange (`testing.exchange_configs`) on fresh databases,
    a broker and a Redis of their own, beside which `start_original` starts the original's
    daemon.  Used as a context manager: everything is stopped and dropped on leaving."""

    def __init__(self, modules, **changes):
        self.modules, self.changes = modules, changes
        self.workdir = tempfile.mkdtemp(prefix="against-original-")
        self.daemons, self.configs = {}, {}
        self.databases, self.broker, self.redis, self.original = [], None, None, None

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def start(self):
        self.databases = [testing.create_database("orig_log", ("trade_log",)),
                          testing.create_database("orig_history", ("trade_history",), True)]
        self.broker = testing.KafkaBroker().start()
        self.redis = PrivateRedis(self.workdir)
        for name, cfg, port in testing.exchange_configs(
                self.broker.address, *self.databases, dict(self.redis.sentinel, db=1)):
            if name not in self.modules:
                continue
            directory = os.path.join(self.workdir, name)
            os.makedirs(os.path.join(directory, "log"))
            cfg.update(self.changes.get(name, {}))
            cfg["log"] = {"path": os.path.join(directory, "log", name),
                          "flag": "fatal,error,warn,info"}
            path = os.path.join(directory, "config.json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            self.daemons[name] = ours(name, path, directory, port)
            self.daemons[name].start()
            self.configs[name] = cfg

    def start_original(self, executable, module, cfg, udp=False):
        """The original's `module` with `cfg` and the sections every daemon of it needs (its
        process limits, log, alert, bind), listening on a port of its own (for datagrams too
        with `udp`)."""
        directory = os.path.join(self.workdir, "original")
        os.makedirs(os.path.join(directory, "log"))
        port = testing.free_port()
        cfg = dict(cfg, log={"path": os.path.join(directory, "log", module),
                             "flag": "fatal,error,warn,info"}, **original_sections(module))
        binds = ["tcp@127.0.0.1:%d" % port] + (["udp@127.0.0.1:%d" % port] if udp else [])
        cfg["svr"] = dict(cfg.get("svr", {}), bind=binds)
        path = os.path.join(directory, "config.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.original = Daemon("original", [executable, path], directory, port)
        self.original.start()
        return self.original

    def __exit__(self, *exc):
        if self.original is not None:
            self.original.stop(signal.SIGKILL)
        for daemon in reversed(list(self.daemons.values())):
            daemon.stop()
        for process in (self.redis, self.broker):
            if process is not None:
                process.stop()
        for name in self.databases:
            testing.drop_database(name)
        shutil.rmtree(self.workdir, ignore_errors=True)


def run_marketprice(args):
    rng = random.Random(args.seed)
    with Exchange(("matchengine", "accesshttp", "marketprice"),
                  marketprice={"debug": True}) as exchange:
        original = exchange.start_original(args.original, "marketprice", {
            "debug": True,
            "svr": {"buf_limit": 100, "max_pkg_size": 1000000, "heartbeat_check": False},
            "deals": {"brokers": exchange.broker.address, "topic": "deals", "partition": 0},
            "redis": exchange.redis.sentinel,
            "accesshttp": exchange.configs["marketprice"]["accesshttp"]})
        engine, mine = exchange.daemons["matchengine"], exchange.daemons["marketprice"]

        def order(*params):
            reply = json.loads(engine.call(201 if len(params) == 8 else 202,
                                           json.dumps(list(params)).encode()))
            return reply["error"] is None

        for user in range(1, 5):
            for n, (asset, amount) in enumerate((("BTC", "1000"), ("BCH", "1000000"),
                                                 ("LTC", "10000"), ("ETH", "10"))):
                engine.call(102, json.dumps([user, asset, "deposit", n, amount, {}]).encode())
        # the original never reads a topic's first message: a deal it may miss, on a market
        # left out of the comparison; then each market's first deal
        order(1, "ETHBCH", 1, "1", "100", "0", "0", "")
        order(2, "ETHBCH", 2, "1", "100", "0", "0", "")
        time.sleep(1)
        for market in MARKETS_COMPARED:
            order(1, market, 1, "1", "100", "0", "0", "")
            order(2, market, 2, "1", "100", "0", "0", "")
        first = int(time.time())
        # the deals compared in full start with the next minute, outside the first buckets
        time.sleep(61 - time.time() % 60)
        print("deals over %d requests to our matchengine" % args.steps)
        for _ in range(args.steps):
            market, side = rng.choice(MARKETS_COMPARED), rng.choice([1, 2])
            amount = "%d.%03d" % (rng.randrange(0, 3), rng.randrange(1, 1000))
            if rng.random() < 0.15:
                order(rng.randrange(1, 5), market, side,
                      amount if side == 1 else str(rng.randrange(1, 300)), "0.001", "api")
            else:
                places = rng.choice([0, 1, 2, 4, 8])
                price = "%d.%s" % (rng.randrange(95, 106), "".join(
                    str(rng.randrange(10)) for _ in range(places))) if places else \
                    str(rng.randrange(95, 106))
                order(rng.randrange(1, 5), market, side, amount, price, "0.002", "0.001", "web")
            time.sleep(rng.choice([0, 0, 0.01, 0.05, 0.2]))
        time.sleep(3)           # every deal read by both
        comparison = Comparison()
        for restart in (False, True):
            if restart:
                time.sleep(11)      # both flushed to Redis (the original every 10 s)
                original.stop(signal.SIGQUIT)
                mine.stop()
                original.start()
                mine.start()
                time.sleep(2)
                print("restarted: each loads its k-lines and deals back from Redis")
            for command, params in market_queries(first, int(time.time())):
                body = json.dumps(params).encode()

                def answers():
                    return [mask_first_buckets(command, params, daemon.call(command, body),
                                               first) for daemon in (original, mine)]

                a, b = answers()
                if a != b and command in (301, 302, 305):
                    # answers of the current second: a second may have begun between the
                    # two, moving the window; both again, early in a second and past the
                    # 0.45 s of their caches
                    wait = 1 - time.time() % 1
                    time.sleep(wait + (1.01 if wait < 0.5 else 0.01))
                    a, b = answers()
                comparison.compare(command, params, a, b)
        original.stop(signal.SIGQUIT)
        return comparison.summary()


MARKETS_COMPARED = ["BTCBCH", "LTCBCH"]


def market_queries(first, now):
    span = now - first
    start = first - first % 60 + 60         # the minute after the first deals
    for market in MARKETS_COMPARED + ["NOPE"]:
        yield 304, [market]
        yield 305, [market]
        for params in ([10000, 0], [5, 10], [0, 0], [10, "1"], [100, 20]):
            yield 303, [market] + params
        for period in (1, 10, 30, 59, span // 2, span + 100, 0, "1"):
            yield 301, [market, period]
        for interval in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 3600, 86400, 604800, 2592000,
                         7, 0):
            yield 302, [market, first, now + 100, interval]
            yield 302, [market, start + 7, now - 3, interval]
        yield 302, [market, first, first - 1, 60]
        yield 302, [market, 0, now, 60]


HTTP_READS = {
    "asset.list": [[]], "asset.summary": [[], ["BTC"], ["NOPE"]],
    "balance.query": [[1], [1, "BTC"], [0], ["x"]],
    "balance.history": [[1, "", "", 0, 0, 0, 10], [1, "BTC", "deposit", 0, 0, 0, 100],
                        [0, "", "", 0, 0, 0, 10]],
    "order.book": [["BTCBCH", 1, 0, 10], ["BTCBCH", 2, 0, 100], ["BTCBCH", 3, 0, 10]],
    "order.depth": [["BTCBCH", 10, "0"], ["BTCBCH", 10, "1"], ["NOPE", 10, "0"]],
    "order.pending": [[1, "BTCBCH", 0, 10], [2, "BTCBCH", 0, 100]],
    "order.pending_detail": [["BTCBCH", 1], ["BTCBCH", 3]],
    "order.deals": [[1, 0, 10], [2, 0, 10]], "order.finished": [[1, "BTCBCH", 0, 0, 0, 10]],
    "order.finished_detail": [[1], [2]], "market.last": [["BTCBCH"], ["NOPE"]],
    "market.deals": [["BTCBCH", 10, 0]], "market.kline": [["BTCBCH", 1, 2000000000, 60]],
    "market.status": [["BTCBCH", 86400]], "market.status_today": [["BTCBCH"]],
    "market.user_deals": [[1, "BTCBCH", 0, 10]], "market.list": [[]],
    "market.summary": [[], ["BTCBCH"]], "no.such_method": [[]],
    # refused by the engine before anything changes: safe to send twice
    "order.put_limit": [["x"]], "balance.update": [[1]]}


def http_requests(seed, count):
    """A seeded stream of (HTTP method, body): read-only calls and writes the engine refuses,
    a quarter with their envelope spoiled, some bodies not JSON, some not POSTed."""
    rng = random.Random(seed)
    for _ in range(count):
        method = rng.choice(sorted(HTTP_READS))
        envelope = {"id": rng.choice([1, 7, 0, -1, 2 ** 40]), "method": method,
                    "params": rng.choice(HTTP_READS[method])}
        x = rng.random()
        if x < 0.05:
            envelope["id"] = rng.choice(["1", 1.5, None, True])
        elif x < 0.1:
            envelope.pop(rng.choice(["id", "method", "params"]))
        elif x < 0.15:
            envelope["params"] = rng.choice([{}, "x", 1, None])
        elif x < 0.18:
            envelope["method"] = rng.choice([1, None, ["a"]])
        elif x < 0.2:
            envelope["extra"] = 1
        body = json.dumps(envelope).encode()
        y = rng.random()
        if y < 0.03:
            yield "POST", b"{not json"
        elif y < 0.05:
            yield "POST", b""
        elif y < 0.07:
            yield "GET", body
        elif y < 0.08:
            yield "POST", b"[1, 2]"
        else:
            yield "POST", body


def http_call(port, verb, body):
    """(status, Content-Type, body with times masked), or the error's name."""
    import http.client
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(verb, "/", body=body)
        response = connection.getresponse()
        return (response.status, response.getheader("Content-Type"),
                TIMES.sub(b"T", response.read()))
    except (OSError, http.client.HTTPException) as e:
        return (type(e).__name__, None, b"")
    finally:
        connection.close()


def run_accesshttp(args):
    with Exchange(("matchengine", "readhistory", "marketprice", "accesshttp"),
                  accesshttp={"worker_num": args.workers}) as exchange:
        gateway = exchange.configs["accesshttp"]
        original = exchange.start_original(args.original, "accesshttp", dict(
            gateway, debug=False, timeout=1.0, svr={"max_pkg_size": 102400},
            monitor={"bind": "tcp@127.0.0.1:%d" % testing.free_port(), "max_pkg_size": 1024}))
        engine = exchange.daemons["matchengine"]
        for params in ([1, "BTC", "deposit", 1, "100", {}],
                       [2, "BCH", "deposit", 2, "100000", {}]):
            engine.call(102, json.dumps(params).encode())
        for params in ([1, "BTCBCH", 1, "1", "100", "0.001", "0.001", ""],
                       [2, "BTCBCH", 2, "0.5", "100", "0.001", "0.001", ""],
                       [2, "BTCBCH", 2, "0.5", "90", "0.001", "0.001", ""]):
            engine.call(201, json.dumps(params).encode())
        time.sleep(2)           # the deal read by marketprice, the history written
        comparison = Comparison()
        ports = original.port, exchange.daemons["accesshttp"].port
        for verb, body in http_requests(args.seed, args.steps):
            a, b = (http_call(port, verb, body) for port in ports)
            key = (verb, "status %s" % a[0])
            comparison.counts[key] = comparison.counts.get(key, 0) + 1
            if a != b:
                comparison.differ("answer", "%s %s" % (verb, body[:300]), repr(a), repr(b))
        return comparison.summary()


ALERT_KEY = b"alert:message"
ALERT_TEXTS = [b"matchengine: [fatal]me_server.c:120(svr_on_recv_pkg): service unavailable",
               b'accessws: [fatal]aw_auth.c:80(on_result): invalid reply: {"code": 1}',
               b"host: tab\there, quotes ' \" and %s %d %%", "host: caf\u00e9 \u4e2d".encode(),
               b"", b"x", b"  spaces around  ", b"host: a\rb", b"host: " + b"y" * 300,
               b"host: \xff\xfe latin \xe9"]     # no NUL: the original cuts an alert there


def alert_items(seed, count):
    """A seeded stream of (transport, chunks) for an alertcenter: lines over UDP, one a
    datagram (some with two lines, some not alerts), and lines over TCP, several a
    connection and split at random places (some with a line that is not an alert, too long,
    or left without its newline)."""
    from utils.alert import MAGIC
    rng = random.Random(seed)

    def line():
        x = rng.random()
        if x < 0.08:
            return rng.choice([MAGIC[:10] + b"\n", b"x" * 30 + b"\n", b"\n",
                               MAGIC[:19] + b"x" + b"host: y\n"])
        return MAGIC + rng.choice(ALERT_TEXTS) + rng.choice([b"\n", b"\n", b"\r\n"])

    for _ in range(count):
        if rng.random() < 0.5:
            datagram = line()
            if rng.random() < 0.1:
                datagram += line()
            yield "udp", [datagram]
            continue
        data = b"".join(line() for _ in range(rng.randrange(1, 5)))
        x = rng.random()
        if x < 0.05:
            data += MAGIC + b"host: " + b"z" * 10300 + b"\n" + line()
        elif x < 0.1:
            data += MAGIC + b"host: no newline"
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(3))))
        yield "tcp", [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def redis_list(port, db, key):
    """Every element of the list `key` in database `db` of the Redis on `port`."""
    def command(*words):
        return b"*%d\r\n" % len(words) + b"".join(
            b"$%d\r\n%s\r\n" % (len(w), w) for w in words)

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command(b"SELECT", b"%d" % db) + command(b"LRANGE", key, b"0", b"-1"))
        reader = sock.makefile("rb")
        reader.readline()                       # +OK
        items = []
        for _ in range(int(reader.readline()[1:])):
            size = int(reader.readline()[1:])
            items.append(reader.read(size + 2)[:-2])
        return items


def run_alertcenter(args):
    from utils.alert import MAGIC
    with Exchange(("alertcenter",)) as exchange:
        ours_db = exchange.configs["alertcenter"]["redis"]["db"]
        original_db = ours_db + 1
        original = exchange.start_original(args.original, "alertcenter", {
            "svr": {"max_pkg_size": 10240},
            "redis": dict(exchange.redis.sentinel, db=original_db)}, udp=True)
        sides = [(original.port, original_db),
                 (exchange.daemons["alertcenter"].port, ours_db)]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        comparison = Comparison()
        seen = [0, 0]
        for step, (transport, chunks) in enumerate(alert_items(args.seed, args.steps)):
            news = []
            for n, (port, db) in enumerate(sides):
                if transport == "udp":
                    udp.sendto(chunks[0], ("127.0.0.1", port))
                else:
                    with contextlib.suppress(OSError), \
                            socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                        for chunk in chunks:
                            sock.sendall(chunk)
                            time.sleep(0.005)
                time.sleep(0.05)
                # then a line of our own: once it is in the list, so is what came before
                marker = b"sync: %d" % step
                udp.sendto(MAGIC + marker + b"\n", ("127.0.0.1", port))
                items = []

                def kept():
                    items[:] = redis_list(exchange.redis.port, db, ALERT_KEY)
                    return items[-1:] == [marker]

                if not testing.wait_until(kept, 10):
                    raise SystemExit("against_original: alertcenter on port %d did not "
                                     "keep %r" % (port, marker))
                news.append(items[seen[n]:])
                seen[n] = len(items)
            key = (transport, "%d alerts" % (len(news[0]) - 1))
            comparison.counts[key] = comparison.counts.get(key, 0) + 1
            if news[0] != news[1]:
                comparison.differ("alerts", "%s %r" % (transport, b"".join(chunks)[:300]),
                                  *where_apart(news[0], news[1]))
        udp.close()
        return comparison.summary()


class WebSocket(testing.WSClient):
    """`testing.WSClient` on a loopback port, subprotocol "chat", whose `receive` answers
    "closed" once the server closed and None when nothing came in time."""

    def __init__(self, port):
        try:
            super().__init__("127.0.0.1", port, protocol="chat", timeout=10)
        except ConnectionError as e:
            raise SystemExit("against_original: no websocket on port %d: %s" % (port, e))

    def receive(self, timeout):
        try:
            return self.recv(timeout)
        except TimeoutError:
            return None
        except OSError:
            return "closed"


WS_QUERIES = {
    "server.ping": [[]], "server.time": [[]],
    "kline.query": [["BTCBCH", 1, 2000000000, 60], ["BTCBCH", 1, 2000000000, 1],
                    ["NOPE", 1, 2, 60], ["BTCBCH", 1, 2000000000, 7]],
    "price.query": [["BTCBCH"], ["NOPE"], []],
    "state.query": [["BTCBCH", 86400], ["BTCBCH", 0], ["BTCBCH"]],
    "today.query": [["BTCBCH"], ["x"]],
    "deals.query": [["BTCBCH", 10, 0], ["BTCBCH", 0, 0], ["BTCBCH", 10, "x"]],
    "depth.query": [["BTCBCH", 10, "0"], ["BTCBCH", 7, "0"], ["BTCBCH", 10, "1"],
                    ["BTCBCH", 10, "x"], ["BTCBCH", 101, "0"]],
    "order.query": [["BTCBCH", 0, 10]], "asset.query": [[], ["BTC"]],
    "order.history": [["BTCBCH", 0, 0, 0, 10, 0]], "asset.history": [["BCH", "", 0, 0, 0, 10]]}
WS_SUBSCRIPTIONS = [("price.subscribe", ["BTCBCH"]), ("state.subscribe", ["BTCBCH"]),
                    ("today.subscribe", ["BTCBCH"]), ("deals.subscribe", ["BTCBCH"]),
                    ("depth.subscribe", ["BTCBCH", 10, "0"]), ("kline.subscribe", ["BTCBCH", 60])]
WS_TIMES = [(re.compile(r'"(ctime|mtime|ftime|time)": ?[0-9.e+-]+'), r'"\1": 0'),
            (re.compile(r'\[\d{10}, '), "[0, "),
            (re.compile(r'"result": \d{10}\b'), '"result": 0')]


def ws_masked(text):
    """A frame's text with its times (fields, k-line rows, server.time) set to 0."""
    for pattern, replacement in WS_TIMES:
        text = pattern.sub(replacement, text)
    return text


def ws_frames(seed, count):
    """A seeded stream of query frames, a tenth with their envelope spoiled."""
    rng = random.Random(seed)
    for _ in range(count):
        method = rng.choice(sorted(WS_QUERIES))
        envelope = {"id": rng.choice([1, 7, 2 ** 40]), "method": method,
                    "params": rng.choice(WS_QUERIES[method])}
        x = rng.random()
        if x < 0.04:
            envelope["id"] = rng.choice(["1", 1.5, None])
        elif x < 0.08:
            envelope.pop(rng.choice(["id", "params"]))
        elif x < 0.12:
            envelope["params"] = rng.choice([{}, "x", 1])
        yield method, json.dumps(envelope)


def run_accessws(args):
    rng = random.Random(args.seed)
    sockets = []
    services = [AuthService(), AuthService()]      # the original's, ours
    with contextlib.ExitStack() as stack:
        for service in services:
            stack.callback(service.close)
        exchange = stack.enter_context(Exchange(
            ("matchengine", "readhistory", "accesshttp", "marketprice", "accessws"),
            accessws=dict(ws_worker_settings(args.workers), auth_url=services[1].url + "auth",
                          sign_url=services[1].url + "sign")))
        front = exchange.configs["accessws"]
        original = exchange.start_original(args.original, "accessws", dict(
            front, debug=False, svr={"max_pkg_size": 102400, "protocol": "chat"},
            monitor={"bind": "tcp@127.0.0.1:%d" % testing.free_port(), "max_pkg_size": 1024},
            deals={"brokers": exchange.broker.address, "topic": "deals", "partition": 0},
            auth_url=services[0].url + "auth", sign_url=services[0].url + "sign"))
        engine = exchange.daemons["matchengine"]
        deposits = iter(range(100, 10 ** 9))

        def put(user, side, amount, price):
            engine.call(201, json.dumps([user, "BTCBCH", side, amount, price, "0.001", "0.001",
                                         ""]).encode())

        def deposit(user, asset, amount):
            engine.call(102, json.dumps([user, asset, "deposit", next(deposits), amount,
                                         {}]).encode())

        def trades():
            for _ in range(rng.randrange(1, 6)):
                put(rng.choice([1, 2]), rng.choice([1, 2]), "0.%03d" % rng.randrange(1, 999),
                    "%d.%02d" % (rng.randrange(95, 106), rng.randrange(100)))

        for user, asset, amount in ((1, "BTC", "100"), (2, "BTC", "100"),
                                    (1, "BCH", "100000"), (2, "BCH", "100000")):
            deposit(user, asset, amount)
        put(1, 1, "1", "100")
        put(2, 2, "0.5", "100")
        put(2, 2, "0.5", "90")
        time.sleep(2)           # the deal read by marketprice and both gateways
        comparison = Comparison()
        ports = original.port, exchange.daemons["accessws"].port
        sockets[:] = [WebSocket(p) for p in ports]
        print("queries")
        compare_frames(comparison, sockets, ports, ws_frames(args.seed, args.steps), 1.5)
        print("authentication and the queries of a user")
        compare_frames(comparison, sockets, ports, ws_user_frames(args.seed, args.steps // 2),
                       3.0)
        if services[0].requests != services[1].requests:
            comparison.differ("auth requests", "every request to auth_url and sign_url",
                              repr(services[0].requests), repr(services[1].requests))
        comparison.counts["auth requests", "compared"] = len(services[0].requests)
        for ws in sockets:
            ws.close()
        # public pushes: each subscription on a connection of each, then rounds of trades
        sockets[:] = [WebSocket(p) for p in ports]
        for ws in sockets:
            for n, (method, params) in enumerate(WS_SUBSCRIPTIONS):
                ws.send(json.dumps({"id": 100 + n, "method": method, "params": params}))
        compare_pushes(comparison, "pushes", sockets, PushView, args.rounds, trades)
        for ws in sockets:
            ws.close()
        # a user's pushes: connections of each that log in and subscribe, then rounds of
        # trades and deposits
        sockets[:] = [WebSocket(p) for p in ports for _ in WS_USER_SESSIONS]
        for n, ws in enumerate(sockets):
            for method, params in WS_USER_SESSIONS[n % len(WS_USER_SESSIONS)]:
                ws.send(json.dumps({"id": 1, "method": method, "params": params}))
                reply = ws.receive(3.0)
                if reply is None or '"error": null' not in reply:
                    raise SystemExit("against_original: %s %s answered %s"
                                     % (method, params, reply))

        def trades_and_deposits():
            trades()
            for _ in range(rng.randrange(0, 3)):
                deposit(rng.choice([1, 2]), rng.choice(["BTC", "BCH"]),
                        "%d.%02d" % (rng.randrange(0, 10), rng.randrange(100)))

        compare_pushes(comparison, "user pushes", sockets, UserPushView, args.rounds,
                       trades_and_deposits)
        for ws in sockets:
            ws.close()
        return comparison.summary()


def ws_worker_settings(workers):
    """The settings of both websocket servers for `workers` worker processes.  Each worker
    keeps a query cache of its own: with several, a query may find an answer cached seconds
    before in one server's worker and none in the other's, and answers of the current second
    (1 s k-lines, 24 h states) differ by when they were made.  The caches then keep answers
    0.45 s, and such an answer is asked of both again, early in a fresh second past that."""
    if workers == 1:
        return {"worker_num": 1}
    return {"worker_num": workers, "cache_timeout": 0.45}


WS_OF_THE_SECOND = ("kline.query", "state.query", "today.query")


def compare_frames(comparison, sockets, ports, frames, timeout):
    """Each (method, frame) to both servers in turn (`sockets`, reconnected to `ports` when
    closed), their answers compared with the times masked."""
    def answers_of(frame):
        answers = []
        for n, ws in enumerate(sockets):
            try:
                ws.send(frame)
                answer = ws.receive(timeout)
            except OSError:
                answer = "closed"
            if answer == "closed":
                ws.close()
                sockets[n] = WebSocket(ports[n])
            answers.append(answer)
        return answers

    for method, frame in frames:
        answers = answers_of(frame)
        masked = [ws_masked(a) if a else a for a in answers]
        if masked[0] != masked[1] and method in WS_OF_THE_SECOND and None not in answers:
            wait = 1 - time.time() % 1
            time.sleep(wait + (1.01 if wait < 0.5 else 0.01))
            answers = answers_of(frame)
            masked = [ws_masked(a) if a else a for a in answers]
        code = "closed" if answers[0] == "closed" else "no reply" if answers[0] is None \
            else (json.loads(answers[0]).get("error") or {}).get("code")
        comparison.counts[method, code] = comparison.counts.get((method, code), 0) + 1
        if masked[0] != masked[1]:
            comparison.differ("answer", frame, answers[0], answers[1])


def compare_pushes(comparison, what, sockets, view, rounds, changes):
    """Rounds of `changes()`, after each what every client of the original (the first half
    of `sockets`) was pushed, as a `view` adds it up, against its twin of ours."""
    views = [view() for _ in sockets]
    half = len(sockets) // 2
    received = [0, 0]
    for round_ in range(rounds + 1):
        if round_:
            changes()
        for n, frames in enumerate(receive_both(sockets, 3.0)):
            received[n >= half] += len(frames)
            for frame in frames:
                views[n].push(ws_masked(frame))
        states = [v.state() for v in views]
        key = (what, "round")
        comparison.counts[key] = comparison.counts.get(key, 0) + 1
        same = True
        for n in range(half):
            if states[n] != states[half + n]:
                same = False
                a, b = where_apart(states[n], states[half + n])
                comparison.differ(what, "round %d, client %d" % (round_, n), a, b)
        if same:
            comparison.out("%s, round %d: the same (frames so far: %d and %d)"
                           % (what, round_, received[0], received[1]))


def where_apart(a, b, path=""):
    """The first place two JSON-like values differ, as (path: what a holds, path: what b
    holds), shortened to what differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key, "(none)") != b.get(key, "(none)"):
                return where_apart(a.get(key, "(none)"), b.get(key, "(none)"),
                                   "%s[%r]" % (path, key))
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        for n, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return where_apart(x, y, "%s[%d]" % (path, n))
        if len(a) != len(b):
            n = min(len(a), len(b))
            return ("%s[%d:]: %r" % (path, n, a[n:]), "%s[%d:]: %r" % (path, n, b[n:]))
    return "%s: %r" % (path, a), "%s: %r" % (path, b)


class AuthService:
    """The exchange's auth service, as accessws asks it: `<url>auth` and `<url>sign` answer by
    the request's Authorization header (`AUTH_ANSWERS`; "slow" answers after the gateway
    stopped waiting), and every request is kept (path, Authorization, Accept-Language,
    Content-Type), so that what two gateways asked can be compared."""

    def __init__(self):
        import http.server
        import threading
        requests = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                token = self.headers.get("Authorization", "")
                requests.append((self.path, token, self.headers.get("Accept-Language"),
                                 self.headers.get("Content-Type")))
                if token == "slow":
                    time.sleep(1.5)
                status, body = AUTH_ANSWERS.get(token, AUTH_ANSWERS["refused"])
                if not isinstance(body, bytes):
                    body = json.dumps(body).encode()
                with contextlib.suppress(OSError):     # "slow": the gateway has gone
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args):
                """Requests are kept in `requests`, not printed."""

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/" % self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _user(user_id):
    return {"code": 0, "message": None, "data": {"user_id": user_id}}


# what the auth service answers, by token; user ids past 32 bits, negative ones and codes
# that are not integers are left out: the two differ on purpose (docs/websocket.md)
AUTH_ANSWERS = {
    "user-1": (200, _user(1)), "user-2": (200, _user(2)), "user-3": (200, _user(3)),
    "user-1-500": (500, _user(1)),
    "refused": (200, {"code": 1001, "message": "token expired", "data": None}),
    "refused-500": (500, {"code": 500, "message": "server error"}),
    "no-message": (200, {"code": 1001}), "number-message": (200, {"code": 7, "message": 7}),
    "no-code": (200, {"message": None, "data": {"user_id": 1}}),
    "no-data": (200, {"code": 0, "message": None}),
    "data-list": (200, {"code": 0, "data": [1]}),
    "no-user": (200, {"code": 0, "data": {}}),
    "zero-user": (200, _user(0)), "text-user": (200, _user("1")),
    "real-user": (200, _user(1.0)), "true-user": (200, _user(True)),
    "not-json": (200, b"<html>down</html>"), "empty": (200, b""),
    "array": (200, b"[0]"),
}
AUTH_TOKENS = sorted(AUTH_ANSWERS) + ["user-1", "user-2", "user-1", "user-2"]
WS_USER_QUERIES = {
    "order.query": [["BTCBCH", 0, 10], ["BTCBCH", 1, 1], ["NOPE", 0, 10], ["BTCBCH", "0", 10],
                    ["BTCBCH", 0], ["BTCBCH", 0, 101], [1, 0, 10], ["BTCBCH", 0, 1.5]],
    "asset.query": [[], ["BTC"], ["BTC", "BCH"], ["NOPE"], [1]],
    "order.history": [["BTCBCH", 0, 0, 0, 10, 0], ["BTCBCH", 0, 0, 0, 10, 1],
                      ["BTCBCH", 0, 0, 0, 10], ["NOPE", 0, 0, 0, 10, 0],
                      ["BTCBCH", "x", 0, 0, 10, 0]],
    "asset.history": [["BCH", "", 0, 0, 0, 10], ["BTC", "deposit", 0, 0, 0, 10],
                      ["BCH", "", 0, 0, 0], ["", "", 0, 0, 0, 10]],
    "order.subscribe": [["BTCBCH"], [], ["BTCBCH", "NOPE"], [1], ["x" * 16]],
    "asset.subscribe": [["BTC"], [], ["BTC", "BCH"], [2], ["x" * 16]],
    "order.unsubscribe": [[]], "asset.unsubscribe": [[], [1]]}
# each user-push client's requests, in order: logged in as users 1 and 2, one whose
# subscriptions as user 1 go when it logs in as user 2, one through server.sign
WS_USER_SESSIONS = [
    [("server.auth", ["user-1", "web"]), ("order.subscribe", ["BTCBCH"]),
     ("asset.subscribe", ["BTC", "BCH"])],
    [("server.auth", ["user-2", "app"]), ("order.subscribe", ["BTCBCH", "NOPE"]),
     ("asset.subscribe", ["BCH"])],
    [("server.auth", ["user-1", "web"]), ("order.subscribe", ["BTCBCH"]),
     ("asset.subscribe", ["BTC"]), ("server.auth", ["user-2", "web"])],
    [("server.sign", ["key-1", "user-1", 1700000000000]), ("order.subscribe", ["NOPE"]),
     ("asset.subscribe", ["BCH", "LTC"])],
]


def ws_user_frames(seed, count):
    """A seeded stream of logins (server.auth, server.sign: every kind of answer of the auth
    service, a fifth with their parameters spoiled) and of the queries and subscriptions of
    a user, before and after them."""
    rng = random.Random(seed)
    for _ in range(count):
        x = rng.random()
        token = "slow" if rng.random() < 0.01 else rng.choice(AUTH_TOKENS)
        if x < 0.25:
            method = "server.auth"
            params = [token, rng.choice(["web", "api", "s" * 31, ""])]
            if rng.random() < 0.2:
                params = rng.choice([[token], [token, "s" * 32], [1, "web"], [token, 2],
                                     [token, "web", 3], []])
        elif x < 0.35:
            method = "server.sign"
            params = [rng.choice(["key-1", "a b/\u00e9&=?", ""]), token,
                      rng.choice([1, 1700000000000, 2 ** 40])]
            if rng.random() < 0.2:
                params = rng.choice([params[:2], params + [1], [1, token, 1],
                                     [params[0], 1, 1], params[:2] + [0],
                                     params[:2] + ["1"], params[:2] + [1.5]])
        else:
            method = rng.choice(sorted(WS_USER_QUERIES))
            params = rng.choice(WS_USER_QUERIES[method])
        yield method, json.dumps({"id": rng.choice([1, 7, 2 ** 40]), "method": method,
                                  "params": params})


class PushView:
    """What a client knows from the pushes it was sent: the depth with each update applied,
    every deal, and the last push of every other kind.  Pushes are sent on timers, so two
    servers may split the same changes over different pushes; what they add up to is
    compared."""

    def __init__(self):
        self.depth = {}
        self.deals = []
        self.last = {}
        self.replies = []

    def push(self, frame):
        message = json.loads(frame)
        method, params = message.get("method"), message.get("params")
        if method is None:
            self.replies.append(message)
        elif method == "depth.update":
            clean, changes = params[0], params[1]
            if clean:
                self.depth = {}
            for side in ("asks", "bids"):
                levels = self.depth.setdefault(side, {})
                for price, amount in changes.get(side, []):
                    if decimal.Decimal(amount) == 0:
                        levels.pop(price, None)
                    else:
                        levels[price] = amount
        elif method == "deals.update":
            self.deals += params[1]
        else:
            self.last[method] = params

    def state(self):
        return {"depth": self.depth, "deals": sorted(self.deals, key=lambda d: d["id"]),
                "last": self.last, "replies": self.replies}


class UserPushView:
    """What a logged-in client knows from its pushes: every `order.update` in order, and for
    each asset how many `asset.update` pushes came and the last balance they showed.  The
    balance of such a push is asked of the engine when a message is read, which two servers
    do at moments apart: of the balances, only the last of each asset is compared."""

    def __init__(self):
        self.orders = []
        self.assets = {}
        self.other = []

    def push(self, frame):
        message = json.loads(frame)
        method, params = message.get("method"), message.get("params")
        if method == "order.update":
            self.orders.append(params)
        elif method == "asset.update" and params and isinstance(params[0], dict):
            for asset, balance in params[0].items():
                count = self.assets.get(asset, (0, None))[0]
                self.assets[asset] = (count + 1, balance)
        elif method != "state.update":
            # state.update is left out: the original's, to a connection given the session
            # slot of a closed one that had subscribed (docs/websocket.md, Pushes)
            self.other.append(message)

    def state(self):
        return {"orders": self.orders, "assets": self.assets, "other": self.other}


def receive_both(sockets, seconds):
    """Every frame each socket receives in the same `seconds`."""
    import select
    frames = [[] for _ in sockets]
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return frames
        waiting = [ws for ws in sockets if ws.pending()]
        if not waiting:
            ready, _, _ = select.select([ws.sock for ws in sockets], [], [], left)
            waiting = [ws for ws in sockets if ws.sock in ready]
        for ws in waiting:
            frame = ws.receive(1.0)
            if frame is not None:
                frames[sockets.index(ws)].append(frame)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\nUsage:")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    modules = parser.add_subparsers(dest="module", required=True)
    engine = modules.add_parser("matchengine", help="compare two matchengines")
    history = modules.add_parser("readhistory", help="compare two readhistory daemons")
    prices = modules.add_parser("marketprice", help="compare two marketprice daemons")
    gateway = modules.add_parser("accesshttp", help="compare two HTTP gateways")
    websocket = modules.add_parser("accessws", help="compare two websocket servers")
    alerts = modules.add_parser("alertcenter", help="compare two alertcenters")
    for sub in (gateway, websocket):
        sub.add_argument("--workers", type=int, default=1, metavar="N",
                         help="worker processes of each gateway (worker_num)")
    websocket.add_argument("--rounds", type=int, default=10,
                           help="rounds of trades whose pushes are compared")
    for sub in (engine, history, prices, gateway, websocket, alerts):
        sub.add_argument("--original", required=True, metavar="PATH",
                         help="the original's executable (matchengine.exe, readhistory.exe)")
        sub.add_argument("--seed", type=int, default=1, help="the random stream's seed")
        sub.add_argument("--steps", type=int, default=2000,
                         help="requests (matchengine: between restarts; marketprice: orders "
                              "to our matchengine, over a minute or two)")
    engine.add_argument("--restarts", type=int, default=0, metavar="N",
                        help="stop and start both daemons N times, comparing their history "
                             "tables and state")
    engine.add_argument("--slice", action="store_true",
                        help="make a slice in both before each restart")
    engine.add_argument("--bad-input", action="store_true",
                        help="spoil a third of the requests")
    engine.add_argument("--precisions", action="store_true",
                        help="assets and markets with other places than the shipped config")
    engine.add_argument("--kafka", action="store_true",
                        help="give each a broker of its own and compare their messages "
                             "(the original linked with a librdkafka newer than 2.0.2)")
    history.add_argument("--fill", type=int, default=2000, metavar="N",
                         help="requests to our matchengine that fill the history first")
    args = parser.parse_args()
    if not os.access(args.original, os.X_OK):
        parser.error("--original: %s is not an executable" % args.original)
    args.original = os.path.abspath(args.original)
    run = {"matchengine": run_matchengine, "readhistory": run_readhistory,
           "marketprice": run_marketprice, "accesshttp": run_accesshttp,
           "accessws": run_accessws, "alertcenter": run_alertcenter}[args.module]
    sys.exit(run(args))


if __name__ == "__main__":
    main()
