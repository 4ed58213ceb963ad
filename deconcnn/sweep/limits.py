"""Bounds on what a sweep file may ask for, checked before any work that grows with it (no Hydra
here: the CLI reads the defaults for its help)."""

MAX_RUNS = 100_000  # runs in one sweep (--max-runs); counted before they are listed
MAX_SWEEP_FILE_BYTES = 1 << 20  # a 216-run sweep file is < 1 KB
MAX_YAML_NODES = 100_000  # YAML nodes once aliases are expanded (an alias bomb expands to billions)
