"""A stand-in run for backend tests: `python -m gated DIR` writes DIR/started, then exits 0 as soon
as DIR/gate exists (a test holds it running as long as it needs; SIGTERM ends it at once)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

GATE, STARTED = "gate", "started"


def main(workdir: Path, timeout_s: float = 300.0) -> int:
    (workdir / STARTED).write_text(str(time.time()))
    deadline = time.monotonic() + timeout_s
    while not (workdir / GATE).exists():
        if time.monotonic() > deadline:
            return 1
        time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
