"""A run's files: metrics.jsonl (the metric log) and run.json (the run's status). No torch import."""
