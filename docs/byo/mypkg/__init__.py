"""A user's own model and dataset, trained by deconcnn-train (docs/byo.md)."""
