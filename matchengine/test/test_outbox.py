# -*- test-case-name: matchengine.test.test_outbox -*-
"""The writer process: batches written to MariaDB and Kafka, resent after it dies."""

import json
import os
import signal

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from matchengine.effects import BALANCE, TOPIC_BALANCES
from matchengine.outbox import WriterOutbox
from matchengine.test.test_server import until
from utils import mysql, testing
from utils.kafka_queue import KafkaConsumerService


def row(user, n):
    return (BALANCE, user % 100, (1700000000.5 + n, user, "BTC", "deposit", "1.00000000",
                                  "%d.00000000" % n, '{"n": %d}' % n))


class WriterTests(TestCase):

    timeout = 120

    async def scenario(self):
        history_db = testing.create_database("out", ("trade_history",), True)
        self.addCleanup(testing.drop_database, history_db)
        broker = testing.KafkaBroker().start()
        self.addCleanup(broker.stop)
        info = testing.require("mysql")
        db_cfg = {"host": info["host"], "port": int(info["port"]), "user": info["user"],
                  "pass": info["password"], "name": history_db}
        outbox = WriterOutbox(reactor, db_cfg, broker.address, workers=2, interval=0.01,
                              restart_delay=0.2)
        outbox.start()
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(outbox.stop()))
        await until(lambda: outbox.process is not None, what="writer started")
        for n in range(1, 201):
            outbox.add([row(7, n)], [(TOPIC_BALANCES, json.dumps([n]))])
            if n == 100:
                outbox.send_now()
                # the writer dies with batches in flight; they are sent again
                os.kill(outbox.process.transport.pid, signal.SIGKILL)
        await outbox.flush()
        self.assertEqual((outbox.pending_history, outbox.pending_messages), (0, 0))
        kw = testing.mysql_connect_kwargs("misc")
        db = mysql.connect_mysql(kw["host"], kw["port"], kw["user"], kw["password"],
                                 history_db, "utf8mb4")
        self.addCleanup(db.close)
        rows = await db.query("SELECT DISTINCT `detail` FROM `balance_history_7` "
                              "ORDER BY `id`")
        self.assertEqual(sorted(json.loads(r[0])["n"] for r in rows), list(range(1, 201)))
        got = []
        consumer = KafkaConsumerService(broker.address, TOPIC_BALANCES,
                                        lambda offset, value: got.append(json.loads(value)[0]),
                                        offset="earliest", reactor=reactor)
        consumer.startService()
        self.addCleanup(consumer.stopService)
        await until(lambda: len(set(got)) >= 200, what="all messages")
        self.assertEqual(sorted(set(got)), list(range(1, 201)))
        self.flushLoggedErrors()

    def test_writer_killed(self):
        """History rows and messages all arrive although the writer was killed mid-way."""
        return defer.Deferred.fromCoroutine(self.scenario())
