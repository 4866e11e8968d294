"""What the compiled modules take from `cython` (class decorators), for running them from
their sources where Cython is not installed: each leaves the class as it is."""


def cclass(cls):
    return cls


def no_gc(cls):
    return cls
