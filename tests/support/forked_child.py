"""A command for tests/backends/test_preloaded.py: reports, into its log, what a process started as
`python -m forked_child <action>` sees, then does the action."""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time

import torch


def report() -> None:
    seen = {
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "path": sys.path,
        "env": os.environ.get("FORKED_CHILD_MARK"),
        "session_leader": os.getsid(0) == os.getpid(),
        "threads": torch.get_num_threads(),
        "main": __name__,
    }
    print("seen " + json.dumps(seen))


if __name__ == "__main__":
    report()
    action = sys.argv[1]
    if action == "exit":
        sys.exit(int(sys.argv[2]))
    elif action == "raise":
        raise ValueError("raised in the run")
    elif action == "message":
        sys.exit("a message for stderr")
    elif action == "atexit":
        atexit.register(lambda: print("atexit ran"))
        threading.Thread(target=lambda: (time.sleep(1), print("thread ended")), daemon=False).start()
    elif action == "sleep":
        print("before the sleep", end="\n")
        time.sleep(60)
