"""What the compiled modules take from `cython` (class decorators, `compiled`), for running
them from their sources where Cython is not installed: each decorator leaves the class as it
is."""

compiled = False


def cclass(cls):
    return cls


def no_gc(cls):
    return cls
