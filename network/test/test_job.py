# -*- test-case-name: network.test.test_job -*-
"""The worker-thread pool, with real threads."""

import threading

import pymysql
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from network.job import JobPool, QueueFull
from utils.testing import mysql_connect_kwargs


class JobPoolTests(TestCase):

    timeout = 30

    def make(self, **kw):
        made, finished = [], []

        def init():
            made.append(threading.get_ident())
            return {"thread": threading.get_ident()}

        kw.setdefault("threads", 2)
        pool = JobPool(reactor, init_resource=init, finish_resource=finished.append,
                       handle=kw.pop("handle", lambda res, job: (res["thread"], job * 2)), **kw)
        pool.start()
        self.addCleanup(pool.stop)
        return pool, made, finished

    async def results_scenario(self):
        pool, made, finished = self.make()
        results = await defer.gatherResults([pool.submit(i) for i in range(50)])
        self.assertEqual([r[1] for r in results], [i * 2 for i in range(50)])
        self.assertTrue({r[0] for r in results} <= set(made))
        self.assertNotIn(threading.get_ident(), {r[0] for r in results})
        self.assertEqual(pool.pending, 0)
        await pool.stop()
        self.assertEqual(len(finished), len(made))

    def test_results_on_reactor(self):
        """Jobs run in worker threads, each with its own resource; results come back."""
        return defer.Deferred.fromCoroutine(self.results_scenario())

    def test_errors(self):
        """An exception in handle becomes the job's failure."""
        pool, _, _ = self.make(handle=lambda res, job: 1 / job)
        return self.assertFailure(pool.submit(0), ZeroDivisionError)

    async def limit_scenario(self):
        gate = threading.Event()
        pool, _, _ = self.make(threads=1, queue_limit=3,
                               handle=lambda res, job: gate.wait(10) and job)
        accepted = [pool.submit(i) for i in range(3)]
        self.assertEqual(pool.pending, 3)
        with self.assertRaises(QueueFull):
            await pool.submit(99)
        gate.set()
        self.assertEqual(await defer.gatherResults(accepted), [0, 1, 2])

    def test_queue_limit(self):
        """Past queue_limit jobs waiting, submit fails with QueueFull."""
        return defer.Deferred.fromCoroutine(self.limit_scenario())

    async def drain_scenario(self):
        pool, _, _ = self.make(threads=1)
        jobs = [pool.submit(i) for i in range(20)]
        await pool.stop()
        self.assertEqual([j.result[1] for j in jobs], [i * 2 for i in range(20)])
        with self.assertRaises(RuntimeError):
            await pool.submit(1)

    def test_stop_drains(self):
        """stop() lets queued jobs finish before the threads end."""
        return defer.Deferred.fromCoroutine(self.drain_scenario())

    async def init_retry_scenario(self):
        attempts = []

        def init():
            attempts.append(1)
            if len(attempts) == 1:
                raise ConnectionError("database down")
            return "conn"

        pool = JobPool(reactor, 1, init, lambda res, job: res, name="retry")
        pool.start()
        try:
            with self.assertRaises(ConnectionError):
                await pool.submit(1)
            self.assertEqual(await pool.submit(2), "conn")
        finally:
            await pool.stop()

    def test_init_retried(self):
        """A resource that fails to initialise fails that job and is retried for the next."""
        return defer.Deferred.fromCoroutine(self.init_retry_scenario())

    async def mysql_scenario(self):
        kwargs = mysql_connect_kwargs()

        def query(conn, n):
            with conn.cursor() as cur:
                cur.execute("SELECT %s + 1, CONNECTION_ID()", (n,))
                return cur.fetchone()

        pool = JobPool(reactor, 3, lambda: pymysql.connect(**kwargs), query,
                       finish_resource=lambda conn: conn.close(), name="mysql")
        pool.start()
        try:
            rows = await defer.gatherResults([pool.submit(i) for i in range(30)])
        finally:
            await pool.stop()
        self.assertEqual([r[0] for r in rows], list(range(1, 31)))
        self.assertLessEqual(len({r[1] for r in rows}), 3)

    def test_mysql_connection_per_thread(self):
        """Each worker owns a real MySQL connection made by its init hook."""
        return defer.Deferred.fromCoroutine(self.mysql_scenario())
