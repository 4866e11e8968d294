# -*- test-case-name: network.test.test_job -*-
"""A pool of worker threads, each owning a resource of its own (C: nw_job).

    pool = JobPool(reactor, 4, init_resource=lambda: pymysql.connect(...),
                   handle=lambda conn, job: run(conn, job), queue_limit=1000)
    pool.start()
    d = pool.submit(job)          # fires on the reactor thread with handle's result

Each thread calls `init_resource()` before its first job (and again before the next job
if it failed: that job fails with the error) and `finish_resource(resource)` when
the pool stops.  The queue is bounded: past `queue_limit` waiting jobs, `submit` fails with
`QueueFull`.  `pending` counts jobs queued or running.  `stop()` lets queued jobs finish.
"""

import queue
import threading

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["JobPool", "QueueFull"]

_STOP = object()


class QueueFull(Exception):
    """The pool's queue is at its limit."""


class JobPool:
    log = Logger()

    def __init__(self, reactor, threads, init_resource, handle, queue_limit=0,
                 finish_resource=None, name="jobs"):
        if threads < 1:
            raise ValueError("a job pool needs at least one thread")
        self._reactor = reactor
        self.threads = threads
        self._init = init_resource
        self._handle = handle
        self._finish = finish_resource
        self.queue_limit = queue_limit
        self.name = name
        self._queue = queue.Queue()
        self._workers = []
        self._pending = 0
        self._stopped = None
        self.running = False

    @property
    def pending(self) -> int:
        return self._pending

    def start(self):
        if self.running:
            return
        self.running = True
        self._stopped = defer.Deferred()
        self._exited = 0
        for i in range(self.threads):
            worker = threading.Thread(target=self._work, name="%s-%d" % (self.name, i),
                                      daemon=True)
            self._workers.append(worker)
            worker.start()

    def submit(self, job):
        if not self.running:
            return defer.fail(RuntimeError("job pool %s is not running" % self.name))
        if self.queue_limit and self._pending >= self.queue_limit:
            return defer.fail(QueueFull("job pool %s has %d jobs waiting"
                                        % (self.name, self._pending)))
        d = defer.Deferred()
        self._pending += 1
        self._queue.put((job, d))
        return d

    def stop(self):
        """Finish queued jobs, release the resources; fires when every thread is done."""
        if not self.running:
            return defer.succeed(None)
        self.running = False
        for _ in self._workers:
            self._queue.put(_STOP)
        stopped = self._stopped
        return stopped

    def _work(self):
        resource = None
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            job, d = item
            try:
                if resource is None and self._init is not None:
                    resource = self._init()  # again on the next job if it fails
                result = self._handle(resource, job)
            except Exception:
                self._reactor.callFromThread(self._done, d, Failure())
            else:
                self._reactor.callFromThread(self._done, d, result)
        if self._finish is not None and resource is not None:
            try:
                self._finish(resource)
            except Exception:
                self._reactor.callFromThread(
                    self.log.failure, "{name}: releasing a worker resource failed",
                    Failure(), name=self.name)
        self._reactor.callFromThread(self._worker_exited)

    def _done(self, d, result):
        self._pending -= 1
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)

    def _worker_exited(self):
        self._exited += 1
        if self._exited == len(self._workers):
            self._workers = []
            stopped, self._stopped = self._stopped, None
            stopped.callback(None)
