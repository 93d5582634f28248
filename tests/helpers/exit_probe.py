"""`python tests/helpers/exit_probe.py fit ...` runs `sasa fit ...` and, when the interpreter is about to
finalise, prints how many of gloo's threads (a process group's) are still alive as
"process-group threads at exit: N". Lightning's DDP launcher re-executes this script for every
extra process, so each rank prints its own line.

Registered before the sasa command is imported, the hook runs after every other atexit handler
(last in, first out): what it sees is what the finalising interpreter would meet.
"""

import atexit
import os
import sys


def _report() -> None:
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                names.append(comm.read().strip())
        except FileNotFoundError:  # the thread ended while we looked
            pass
    gloo = [name for name in names if "gloo" in name]
    print(f"process-group threads at exit: {len(gloo)} {' '.join(gloo)}".rstrip(), file=sys.stderr, flush=True)


atexit.register(_report)

if __name__ == "__main__":
    from sasa_lightning.cli import main

    sys.exit(main())
