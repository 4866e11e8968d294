#!/usr/bin/env python3
"""Run trial over every package of the project and end with a line `N passed, N failed`.

    python depends/run_tests.py                 # every package that has a test/ folder
    python depends/run_tests.py utils.test.test_rpc   # any trial arguments

Exits with trial's status.
"""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def packages():
    found = []
    for name in sorted(os.listdir(ROOT)):
        if os.path.exists(os.path.join(ROOT, name, "test", "__init__.py")):
            found.append(name)
    return found


def summarize(last_line):
    counts = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", last_line))
    passed = counts.get("successes", 0)
    failed = (counts.get("failures", 0) + counts.get("errors", 0)
              + counts.get("unexpectedSuccesses", 0))
    line = "%d passed, %d failed" % (passed, failed)
    if counts.get("skips"):
        line += ", %d skipped" % counts["skips"]
    return line


def main(argv):
    args = argv or packages()
    proc = subprocess.Popen([sys.executable, "-m", "twisted.trial"] + args, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.startswith(("PASSED", "FAILED")):
            last = line
    rc = proc.wait()
    if not last:
        print("0 passed, 1 failed (trial ended without a summary, exit %d)" % rc)
        return rc or 1
    print(summarize(last))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
