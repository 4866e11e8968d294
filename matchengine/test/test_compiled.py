# -*- test-case-name: matchengine.test.test_compiled -*-
"""The modules compiled with Cython (those with a .pxd beside them, see setup.py): built,
not older than their sources, and answering as their sources do when run uncompiled.

`make test` sets VIABTC_REQUIRE_COMPILED=1: there a module left uncompiled fails the suite
instead of being skipped, so the suite checks what is deployed.
"""

import gc
import glob
import importlib
import marshal
import os
import random
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from matchengine import server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("matchengine", "utils")


def compiled_modules():
    """Dotted names of the modules with a .pxd beside them."""
    return sorted(os.path.relpath(path, ROOT)[:-len(".pxd")].replace(os.sep, ".")
                  for path in glob.glob(os.path.join(ROOT, "*", "*.pxd")))


def is_extension(module):
    return not module.__file__.endswith(".py")


def _pick(rng, eng, now):
    """One command of the mix: orders on two markets, cancels, balance changes, reads, and
    requests that are refused."""
    user = rng.randrange(1, 21)
    market = rng.choice(("BTCBCH", "LTCBCH"))
    mid = 10000 if market == "BTCBCH" else 100
    roll = rng.random()
    if roll < 0.5:
        side = rng.choice((1, 2))
        price = mid + rng.randrange(-30, 31) * (mid // 1000 or 1)
        amount = "%d.%03d" % (rng.randrange(0, 4), rng.randrange(0, 1000))
        fees = rng.choice((("0.002", "0.001"), ("0", "0"), ("0.0015", "0.0005")))
        return 201, [user, market, side, amount, str(price), fees[0], fees[1], "mix"]
    if roll < 0.6:
        side = rng.choice((1, 2))
        amount = "%d.%04d" % (rng.randrange(0, 3 if side == 1 else 30000),
                              rng.randrange(0, 10000))
        return 202, [user, market, side, amount, rng.choice(("0.002", "0")), "mix"]
    if roll < 0.7:
        orders = list(eng.markets[market].orders.values())
        if orders and rng.random() < 0.9:
            order = rng.choice(orders)
            owner = order.user_id if rng.random() < 0.9 else user
            return 204, [owner, market, order.id]
        return 204, [user, market, rng.randrange(1, 10 ** 6)]
    if roll < 0.8:
        asset = rng.choice(("BTC", "LTC", "BCH"))
        change = "%s%d.%02d" % (rng.choice(("", "-")), rng.randrange(0, 500),
                                rng.randrange(0, 100))
        return 102, [user, asset, "deposit", rng.randrange(1, 300), change, {"n": user}]
    reads = (
        (101, [user]), (101, [user, "BTC", "BCH"]), (203, [user, market, 0, 10]),
        (205, [market, rng.choice((1, 2)), 0, 20]), (206, [market, 10, "0"]),
        (206, [market, 5, rng.choice(("10", "0.5", "1000"))]), (207, [market, user * 7]),
        (308, []), (105, []), (105, ["BTC"]), (201, [user, "NOPE", 1, "1", "1", "0", "0", ""]),
        (201, [user, market, 1, "NaN", "1", "0", "0", ""]), (202, [user, market, 3, "1", "0", ""]),
    )
    return reads[rng.randrange(len(reads))]


def workload(seed=7, steps=4000):
    """Lines telling everything an engine answers and leaves behind over a seeded mix of
    commands, then the state it ends in and the state a replay of its log ends in."""
    from matchengine import config, engine
    from utils import handoff, rpc

    modules = [name for name in compiled_modules()
               if is_extension(importlib.import_module(name))]
    lines = ["extension modules: %s" % " ".join(modules)]
    eng = engine.Engine(*config.example_tables())
    rng = random.Random(seed)
    now = 1795561714.0
    log = []
    for user in range(1, 21):
        for asset, amount in (("BTC", "300"), ("LTC", "30000"), ("BCH", "3000000")):
            log.append((engine.Engine.log_entry(102, [user, asset, "deposit", 0, amount, {}]),
                        now))
            eng.execute(102, [user, asset, "deposit", 0, amount, {}], now)
    eng.effects.take()
    for _ in range(steps):
        now = round(now + rng.random() / 100, 6)
        command, params = _pick(rng, eng, now)
        try:
            result = eng.execute(command, params, now)
        except rpc.RPCError as e:
            lines.append("%d refused %d %s" % (command, e.code, e.message))
            continue
        lines.append("%d %s" % (command, rpc.reply_body(0, result).decode()))
        if command in engine.WRITE_COMMANDS:
            log.append((engine.Engine.log_entry(command, params), now))
        # as the writer process gets them
        history, messages = marshal.loads(handoff.dumps(eng.effects.take()))
        lines.extend(repr(row) for row in history)
        lines.extend(repr(message) for message in messages)
    lines.extend(_state(eng, "end"))
    again = engine.Engine(*config.example_tables())
    for detail, t in log:
        again.replay(*engine.load_detail(detail), t)
    lines.extend(_state(again, "replayed"))
    return lines


def _state(eng, label):
    lines = ["%s: order_id %d deal_id %d" % (label, eng.order_id, eng.deal_id)]
    for key, entry in sorted(eng.balances.entries.items()):
        lines.append("%s: balance %r %r" % (label, key, [str(v) for v in entry]))
    lines.append("%s: fees %r" % (label, sorted((k, str(v))
                                                for k, v in eng.balances.fees.items())))
    for name, market in sorted(eng.markets.items()):
        for order in market.orders.values():
            lines.append("%s: order %s %s" % (label, name, order.info_json()))
    return lines


def run_workload(path, cython=True):
    """The workload's lines, run in a fresh interpreter that imports the project from
    `path` (without `cython`, as if Cython were not installed)."""
    code = ("import sys; sys.path.insert(0, %r); %s"
            "from matchengine.test.test_compiled import workload; "
            "sys.stdout.write('\\n'.join(workload()))"
            % (path, "" if cython else "sys.modules['cython'] = None; "))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=path, check=False)
    if done.returncode:
        raise AssertionError("the workload failed in %s:\n%s" % (path, done.stderr))
    return done.stdout.split("\n")


class CompiledTests(SynchronousTestCase):

    def setUp(self):
        self.names = compiled_modules()
        self.modules = [importlib.import_module(name) for name in self.names]
        if not any(is_extension(m) for m in self.modules):
            if os.environ.get("VIABTC_REQUIRE_COMPILED") == "1":
                self.fail("no module is compiled (make build)")
            self.skipTest("the modules are not compiled (make build)")

    def test_every_module_compiled(self):
        """Each module with a .pxd is imported from its extension module, and the daemon,
        which warns when one is not, checks the same list."""
        self.assertEqual(list(server.COMPILED_MODULES), self.names)
        self.assertEqual([n for n, m in zip(self.names, self.modules) if not is_extension(m)],
                         [])
        self.assertEqual(server.uncompiled(), [])

    def test_orders_out_of_the_collectors_reach(self):
        """Compiled, an order is not tracked by the garbage collector: a book of a million
        resting orders made after start adds nothing to any collection's work (a full one
        over them held the matching thread for half a second)."""
        from matchengine import config, engine
        eng = engine.Engine(*config.example_tables())
        eng.execute(102, [1, "BTC", "deposit", 1, "1", {}], 1.0)
        eng.execute(201, [1, "BTCBCH", 1, "1", "9000", "0.002", "0.001", "x"], 1.0)
        order, = eng.markets["BTCBCH"].orders.values()
        self.assertFalse(gc.is_tracked(order))

    def test_not_older_than_sources(self):
        """An extension module older than its .py or .pxd runs code that is not the
        source's any more."""
        stale = []
        for name, module in zip(self.names, self.modules):
            base = os.path.join(ROOT, *name.split("."))
            built = os.path.getmtime(module.__file__)
            stale.extend(source for source in (base + ".py", base + ".pxd")
                         if os.path.getmtime(source) > built)
        self.assertEqual(stale, [], "compiled before its source changed: make build")

    def test_sources_answer_alike(self):
        """The same commands give the same answers, history rows, messages, final state and
        replayed state, to the character, from the compiled modules and from their sources
        run uncompiled."""
        pure = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, pure)
        for package in PACKAGES:
            shutil.copytree(os.path.join(ROOT, package), os.path.join(pure, package),
                            ignore=shutil.ignore_patterns("*.so", "__pycache__", "log"))
        compiled_lines = run_workload(ROOT)
        pure_lines = run_workload(pure, cython=False)
        self.assertEqual(pure_lines[0], "extension modules: ")
        self.assertEqual(compiled_lines[0], "extension modules: " + " ".join(self.names))
        self.assertGreater(len(compiled_lines), 20000)
        for kind in ("201 {", "202 {", "204 {", "102 {", "refused 10", "refused 11",
                     "refused 12", "'deals'", "'balance_history'", "end: order",
                     "replayed: order"):
            self.assertTrue(any(kind in line for line in compiled_lines), kind)
        for n, (mine, theirs) in enumerate(zip(compiled_lines[1:], pure_lines[1:]), 2):
            self.assertEqual(mine, theirs, "line %d differs" % n)
        self.assertEqual(len(compiled_lines), len(pure_lines))
