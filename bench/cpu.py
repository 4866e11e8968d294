"""CPU time of the processes a benchmark involves, read from /proc (Linux)."""

import os

from utils import testing
from utils.watchdog import read_pid

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid, children=False):
    """CPU seconds (user + system) a live process has used; with `children`, those of the
    children it has waited for too.  None when it cannot be read."""
    fields = testing.proc_stat(pid)
    if fields is None:
        return None
    # utime..cstime are fields 14..17 of proc(5), the first here being field 3
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / TICK


def family_cpu(pid):
    """CPU seconds of a live process with its children, living or waited for."""
    return process_cpu(pid, children=True) + sum(
        filter(None, map(process_cpu, testing.children(pid))))


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
             "Kafka broker": read_pid(os.path.join(testing.ROOT, "depends", "run",
                                                   "kafka.pid"))}
    return {label: pid for label, pid in found.items() if pid is not None}
