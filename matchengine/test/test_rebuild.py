# -*- test-case-name: matchengine.test.test_rebuild -*-
"""Operations committed but never handed to the writer get their history and messages."""

import json

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from matchengine import config, persist
from matchengine.effects import (BALANCE, HISTORY_COLUMNS, TOPIC_BALANCES, TOPIC_DEALS,
                                 TOPIC_ORDERS)
from matchengine.rebuild import Output
from matchengine.test.test_server import Harness
from matchengine.writer import Positions
from utils import handoff
from utils.kafka_queue import KafkaConsumerService

TOPICS = (TOPIC_DEALS, TOPIC_ORDERS, TOPIC_BALANCES)
LIVE = [
    (102, [1, "BTC", "deposit", 1, "10", {"note": "first"}]),
    (102, [2, "BCH", "deposit", 2, "1000", {}]),
    (201, [1, "BTCBCH", 1, "2", "100", "0.002", "0.001", "web"]),
    # the operations the killed daemon committed and never handed over
    (102, [3, "BCH", "deposit", 3, "500", {"k": "v"}]),
    (201, [3, "BTCBCH", 2, "0.5", "100", "0.002", "0.001", "app"]),
    (201, [2, "BTCBCH", 2, "1.5", "100", "0.002", "0.001", "app"]),
]
HANDED = 3      # of LIVE, the operations whose effects reached the writer
# the column that tells when a history row was made
MADE = {table: columns.index("finish_time" if "finish_time" in columns else "time")
        for table, columns in HISTORY_COLUMNS.items()}


class PositionTests(SynchronousTestCase):

    def test_rows_not_written(self):
        """A batch's rows in a shard are skipped once the shard's position, or the
        history lane's, reaches the batch's last operation."""
        positions = Positions({"history": 10, "messages": 12, "balance_history_7": 15})
        rows = [(BALANCE, 7, ("a",)), (BALANCE, 8, ("b",))]
        self.assertEqual(positions.rows(10, rows), [])
        self.assertEqual(positions.rows(15, rows), [(BALANCE, 8, ("b",))])
        self.assertEqual(positions.rows(16, rows), rows)
        self.assertEqual(positions.messages_of(12, ["m"]), [])
        self.assertEqual(positions.messages_of(13, ["m"]), ["m"])
        self.assertEqual(Positions({}).rows(1, rows), rows)

    def test_tables_as_data(self):
        """The assets and markets reach the rebuild as JSON values, unchanged."""
        tables = config.example_tables()
        data = json.loads(json.dumps(config.tables_data(*tables)))
        self.assertEqual(config.tables_from_data(data), tables)

    def test_output_batches(self):
        """Rebuilt effects go out in batches of whole operations; the last one ends at the
        operation the rebuild was asked to reach, however little it holds."""
        frames = []
        output = Output(frames.append, Positions({"history": 4, "balance_history_7": 6}))
        output.emit(5, [(BALANCE, 7, ("a",)), (BALANCE, 8, ("b",))], ["m5"])
        output.emit(6, [(BALANCE, 7, ("c",))], [])
        output.emit(7, [(BALANCE, 7, ("d",))], ["m7"])
        output.flush(9)
        self.assertEqual(frames, [handoff.dumps_framed(
            (0, 9, [(BALANCE, 8, ("b",)), (BALANCE, 7, ("d",))], ["m5", "m7"]))])
        output.flush(9)
        self.assertEqual(len(frames), 2)       # the end mark alone


async def history(h, db_name):
    """Every history row, by table, in id order, without the ids."""
    db = h.database(db_name)
    found = {}
    for table, columns in HISTORY_COLUMNS.items():
        names = ", ".join("`%s`" % c for c in columns)
        rows = []
        for shard in range(100):
            rows += [(shard,) + tuple(row) for row in await db.query(
                "SELECT %s FROM `%s_%d` ORDER BY `id`" % (names, table, shard))]
        found[table] = rows
    return found


def made_after(found, t):
    """Of `history`'s rows, those made after `t`."""
    return {table: [row for row in rows if row[1 + MADE[table]] > t]
            for table, rows in found.items()}


async def messages(broker):
    """Every message on the three topics, once none came for a second."""
    got = {topic: [] for topic in TOPICS}
    consumers = []
    for topic in TOPICS:
        consumer = KafkaConsumerService(broker.address, topic,
                                        lambda offset, value, t=topic: got[t].append(value),
                                        offset="earliest", reactor=reactor)
        consumer.startService()
        consumers.append(consumer)
    try:
        count = -1
        while count != sum(map(len, got.values())):
            count = sum(map(len, got.values()))
            await deferLater(reactor, 1.5, lambda: None)
    finally:
        for consumer in consumers:
            await consumer.stopService()
    return got


class RebuildTests(TestCase):

    timeout = 240

    async def log_rows(self, h):
        db = h.database(h.log_db)
        tables = await persist.operlog_tables(db)
        rows = []
        for table in tables:
            rows += [(table,) + tuple(r) for r in await db.query(
                "SELECT `id`, `time`, `detail` FROM `%s` ORDER BY `id`" % table)]
        return rows

    async def copy_log(self, h, rows):
        db = h.database(h.log_db)
        for table, oper_id, t, detail in rows:
            await db.execute("CREATE TABLE IF NOT EXISTS `%s` LIKE `operlog_example`" % table)
            await db.execute("INSERT INTO `%s` (`id`, `time`, `detail`) VALUES (%%s, %%s, %%s)"
                             % table, (oper_id, t, detail))

    async def written_up_to(self, h, oper_id):
        db = h.database(h.history_db)

        async def positions():
            return dict(await db.query("SELECT `name`, `oper_id` FROM `history_position` "
                                       "WHERE `name` IN ('history', 'messages')"))
        found = {}
        for _ in range(300):
            found = await positions()
            if found == {"history": oper_id, "messages": oper_id}:
                return
            await deferLater(reactor, 0.2, lambda: None)
        self.fail("positions %r, not %d" % (found, oper_id))

    async def scenario(self):
        # the original run: every operation live
        live = Harness(self)
        await live.start()
        for command, params in LIVE:
            reply = await live.call(command, params)
            self.assertIsNone(reply["error"], (command, params))
        await live.stop()
        logged = await self.log_rows(live)
        self.assertEqual([r[1] for r in logged], list(range(1, len(LIVE) + 1)))
        want_history = await history(live, live.history_db)
        want_messages = await messages(live.broker)

        # the same log where the writer has the effects of the first operations only: a new
        # history database starts at the operations recovered
        run = Harness(self)
        await self.copy_log(run, logged[:HANDED])
        await run.start()
        self.assertEqual(await history(run, run.history_db),
                         {table: [] for table in HISTORY_COLUMNS})
        self.assertTrue(await run.service.make_slice())
        await run.stop()
        # then the operations committed by a daemon killed before it handed them over
        await self.copy_log(run, logged[HANDED:])
        await run.start()
        await self.written_up_to(run, len(LIVE))
        got_history = await history(run, run.history_db)
        got_messages = await messages(run.broker)
        # the rebuilt effects are those the live run made, to the last digit and microsecond
        handed_time = logged[HANDED - 1][2]
        self.assertEqual(got_history, made_after(want_history, handed_time))
        self.assertTrue(all(got_history[table] for table in HISTORY_COLUMNS))
        for topic in TOPICS:
            self.assertTrue(got_messages[topic], topic)
            self.assertEqual(got_messages[topic],
                             want_messages[topic][-len(got_messages[topic]):], topic)

        # a slice after them, then the writer's positions set back before it (as after a
        # crash of the machine that lost what the writer held): the rebuild starts from the
        # slice before those operations, and writes each row once
        self.assertTrue(await run.service.make_slice())
        await run.stop()
        db = run.database(run.history_db)
        await db.execute("UPDATE `history_position` SET `oper_id` = %s", (HANDED,))
        for table, columns in HISTORY_COLUMNS.items():
            for shard in range(100):
                await db.execute("DELETE FROM `%s_%d` WHERE `%s` > %%s"
                                 % (table, shard, columns[MADE[table]]), (handed_time,))
        self.assertEqual(await history(run, run.history_db),
                         {table: [] for table in HISTORY_COLUMNS})
        await run.start()
        await self.written_up_to(run, len(LIVE))
        self.assertEqual(await history(run, run.history_db), got_history)

    def test_unhanded_operations_rebuilt(self):
        """Operations in the log whose effects the writer never got (the daemon was killed
        after their commit) get the history rows and messages the live run made, once; from
        an older slice when the newest is after them."""
        return defer.Deferred.fromCoroutine(self.scenario())
