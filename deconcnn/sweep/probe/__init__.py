"""deconcnn-sweep probe-resources: rules.py (when to stop, what to choose, reading probe.json),
measure.py (the job that measures), runner.py (the command), render.py (table and plot)."""

from deconcnn.sweep.probe.rules import ProbeFileError, probe_hours_per_run, read_probe_choice

__all__ = ["ProbeFileError", "probe_hours_per_run", "read_probe_choice"]
