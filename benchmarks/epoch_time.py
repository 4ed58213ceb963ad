"""Seconds per epoch of one real run (S-core by default, every monitor on), and the GPU-hours that
projects to for the 216-run sweep. Plain script, prints a markdown table.

    python benchmarks/epoch_time.py --device cuda [--epochs 1] [--probe results/loss_lin_slope/probe.json]

The epoch is timed from the run's own metric log (first to last train record of the epoch), so it
includes validation 4 times, checkpoints, and the curvature record at step 0.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from deconcnn.runconfig import compose_run_config
from deconcnn.runlog.metrics_reader import iter_records
from deconcnn.training.run import train

SWEEP_RUNS, SWEEP_EPOCHS = 216, 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--experiment", default="loss_lin_slope_base")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--samples", type=int, default=50_000, help="synthetic training-set size (CIFAR: 50k)")
    parser.add_argument("--probe", type=Path, help="probe.json: also project at its k per variant")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_run_config(
            [
                f"experiment={args.experiment}",
                "data=synthetic",
                f"data.source.num_samples={args.samples}",
                f"data.val_size={args.samples // 10}",
                f"trainer.max_epochs={args.epochs}",
                f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
                "trainer.enable_progress_bar=false",
                f"run_dir={run_dir}",
            ]
        )
        train(cfg)
        train_records = [r for r in iter_records(Path(run_dir) / "metrics.jsonl") if r["kind"] == "train"]
    last_epoch = [r for r in train_records if r["epoch"] == args.epochs - 1]
    steps = len(last_epoch)
    epoch_s = last_epoch[-1]["time"] - last_epoch[0]["time"]
    epoch_s *= steps / max(1, steps - 1)  # n records span n-1 step intervals
    hours = SWEEP_RUNS * SWEEP_EPOCHS * epoch_s / 3600
    print("| measurement | value |")
    print("|---|---|")
    print(
        f"| {cfg.variant} width {cfg.model.width}, batch {cfg.data.batch_size}, k=1: seconds per epoch "
        f"({steps} steps) | {epoch_s:.1f} s |"
    )
    print(f"| projected GPU-hours, 216 runs x 50 epochs at k=1 | {hours:.1f} h |")
    if args.probe and args.probe.exists():
        probe = json.loads(args.probe.read_text())
        for variant, entry in probe.get("variants", {}).items():
            k = (entry.get("choice") or {}).get("k")
            rates = {m["k"]: m.get("aggregate_samples_per_s") for m in entry.get("measurements", [])}
            if k and rates.get(k) and rates.get(1):
                speedup = rates[k] / rates[1]
                print(
                    f"| projected GPU-hours if all runs packed like {variant}: k={k}, x{speedup:.2f} "
                    f"aggregate | {hours / speedup:.1f} h |"
                )


if __name__ == "__main__":
    main()
