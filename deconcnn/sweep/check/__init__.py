"""deconcnn-sweep check: the pre-launch checklist (rules.py), its runs (runner.py), its table (render.py)."""
