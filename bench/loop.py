"""Running a benchmark's asynchronous part on the global reactor."""

from twisted.internet import defer, reactor


def run(coroutine_function, *args):
    """Run `coroutine_function(*args)` on the reactor until it ends; returns its result or
    raises its exception here.  The reactor runs once per process."""
    outcome = {}

    def start():
        done = defer.Deferred.fromCoroutine(coroutine_function(*args))
        done.addCallbacks(lambda result: outcome.setdefault("result", result),
                          lambda failure: outcome.setdefault("error", failure))
        done.addBoth(lambda _: reactor.stop())
    reactor.callWhenRunning(start)
    reactor.run()
    if "error" in outcome:
        outcome["error"].raiseException()
    return outcome.get("result")
