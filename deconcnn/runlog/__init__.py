"""What runs and sweeps leave on disk: a run's metrics.jsonl and run.json, a sweep directory's file
names (layout), and the run states (states). No torch import, and no scheduler asked."""
