"""CPU time of the processes a benchmark involves, read from /proc (Linux).

`Meter` samples a set of named processes at the start and the end of a run and reports the
CPU seconds each used in between, so a benchmark can say where its work went: the daemon,
the load generator, MariaDB, the Kafka broker.
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid, children=False):
    """CPU seconds (user + system) a live process has used; with `children`, those of the
    children it has waited for too.  None when it cannot be read."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after the command name: state is field 3 of stat(5); utime..cstime are 14..17
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / TICK


def children_of(pid):
    """The pids whose parent is `pid`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append(int(name))
    return found


def find_process(*commands):
    """The pid of the first process running one of `commands` (by name), or None."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % name) as f:
                if f.read().strip() in commands:
                    return int(name)
        except OSError:
            continue
    return None


def local_services():
    """{label: pid} of the local MariaDB server and Kafka broker that can be found."""
    found = {"MariaDB": find_process("mariadbd", "mysqld"),
             "Kafka broker": _read_pid(os.path.join(ROOT, "depends", "run", "kafka.pid"))}
    return {label: pid for label, pid in found.items() if pid is not None}


def _read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


class Meter:
    """CPU seconds used between `start()` and `stop()` by each named process."""

    def __init__(self, pids):
        self.pids = dict(pids)
        self.before = {}
        self.used = {}

    def start(self):
        self.before = {label: process_cpu(pid) for label, pid in self.pids.items()}

    def stop(self):
        for label, pid in self.pids.items():
            after = process_cpu(pid)
            if after is not None and self.before.get(label) is not None:
                self.used[label] = after - self.before[label]
        return self.used
