# -*- test-case-name: matchengine.test.test_operlog -*-
"""How the operation log groups entries into commits, on a Clock with commits the test
finishes by hand."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from matchengine.operlog import OperationLog


class HeldCommits:
    """Stands in for the database: each interaction waits until the test ends it."""

    def __init__(self):
        self.commits = []          # (rows, deferred)

    def interaction(self, work, table, create, rows):
        d = defer.Deferred()
        self.commits.append(([row[0] for row in rows], d))
        return d

    def finish(self, index=0, error=None):
        ids, d = self.commits.pop(index)
        if error is None:
            d.callback(None)
        else:
            d.errback(Failure(error))
        return ids


class GroupingTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.db = HeldCommits()
        self.log = OperationLog(self.db, self.clock, clock_time=lambda: 0.0)
        self.replies = []

    def append(self, n=1):
        for _ in range(n):
            batch = self.log.append(1.0, "{}")
            batch.then(self.replies.append, self.log.last_id)

    def test_idle_log_commits_on_the_next_turn(self):
        """With no commit in flight, the entries of one pass of the loop form a batch that
        is committed on the next turn, without waiting for a window."""
        self.append(3)
        self.assertEqual(self.db.commits, [])
        self.clock.advance(0)
        self.assertEqual([ids for ids, _ in self.db.commits], [[1, 2, 3]])
        self.assertEqual(self.replies, [])
        self.db.finish()
        self.assertEqual(self.replies, [1, 2, 3])
        self.assertEqual((self.log.committed_id, self.log.pending_rows), (3, 0))

    def test_after_release_follows_each_batch(self):
        """`after_release` runs once per committed batch, after all of its callbacks."""
        self.log.after_release = lambda: self.replies.append("released")
        self.append(2)
        self.clock.advance(0)
        self.append()
        self.db.finish()
        self.assertEqual(self.replies, [1, 2, "released"])
        self.db.finish()
        self.assertEqual(self.replies, [1, 2, "released", 3, "released"])

    def test_entries_during_a_commit_form_the_next(self):
        """What arrives while a commit is in flight is committed, as one batch, the moment
        that commit finishes; replies come out in order."""
        self.append()
        self.clock.advance(0)
        self.append(4)
        self.clock.advance(10)
        self.assertEqual(len(self.db.commits), 1)
        self.assertIs(self.log.barrier, self.log.current)
        self.db.finish()
        self.assertEqual(self.replies, [1])
        self.assertEqual([ids for ids, _ in self.db.commits], [[2, 3, 4, 5]])
        self.db.finish()
        self.assertEqual(self.replies, [1, 2, 3, 4, 5])
        self.assertIsNone(self.log.barrier)

    def test_window_delays_the_first_commit(self):
        """A configured window holds an idle log's batch that long."""
        self.log.window = 0.005
        self.append(2)
        self.clock.advance(0.004)
        self.assertEqual(self.db.commits, [])
        self.clock.advance(0.001)
        self.assertEqual([ids for ids, _ in self.db.commits], [[1, 2]])

    def test_failed_commit_is_retried_whole(self):
        """A failed batch is written again after the retry delay; nothing is released
        before it commits, and later entries wait behind it."""
        self.append(2)
        self.clock.advance(0)
        self.db.finish(error=RuntimeError("gone away"))
        self.flushLoggedErrors()
        self.append()
        self.clock.advance(0.5)
        self.assertEqual(self.db.commits, [])
        self.clock.advance(0.5)
        self.assertEqual([ids for ids, _ in self.db.commits], [[1, 2]])
        self.assertEqual(self.replies, [])
        self.db.finish()
        self.db.finish()
        self.assertEqual(self.replies, [1, 2, 3])

    def test_flush_waits_for_everything(self):
        """flush() fires once every entry appended before it is committed."""
        self.append()
        self.clock.advance(0)
        self.append()
        done = self.log.flush()
        self.assertNoResult(done)
        self.db.finish()
        self.assertNoResult(done)
        self.db.finish()
        self.successResultOf(done)
        self.assertEqual(self.replies, [1, 2])

    def test_asynchronous_mode_releases_at_once(self):
        """With `durable` off, replies go out before the commit, as in the original."""
        self.log.durable = False
        self.append(2)
        self.assertEqual(self.replies, [1, 2])
        self.assertIsNone(self.log.barrier)
        self.clock.advance(0)
        self.assertEqual(len(self.db.commits), 1)
