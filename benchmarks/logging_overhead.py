"""Cost of the full per-batch + quarter-epoch logging, measured side by side in one process.

Two Lightning Trainers are built from the project's Hydra config (``conf/train.yaml``) with the same
model, data, optimiser and validation schedule (4 validations per epoch):

* ``logging on``:  the run's callbacks (``LossSlopeLogger``) and logger (``MetricsJsonlLogger``):
  every batch's loss (nats, bits), accuracy, lr, wd and the pre-clipping gradient norm, every
  validation's loss/accuracy/grad_norm/weight_norm, flushes every 50 steps and at every validation;
* ``logging off``: the same composition with ``~callbacks.loss_slope_logger`` and no logger.

Checkpointing is off in both (writing checkpoints is not logging). Every fit trains a freshly
initialised model (same seed) on the same datamodule; fits of the two arms alternate (off, on, on,
off, ...) so drift in the machine's speed hits both. Step time is the training loop's wall time from
batch ``--skip`` to the end of training (CUDA-synchronised), minus the validation loops' own time
(the validation forward passes run identically in both arms; the val record written at their end
is counted as logging). Reported: median steps/s per arm, the overhead as the ratio of medians and
as the median of per-repetition paired ratios, and the host time spent inside the logging hooks.
No asserts: the goal (<= 2% of step time) is for the reader to compare.

    python benchmarks/logging_overhead.py                      # width 0.25, batch 128, this CPU
    python benchmarks/logging_overhead.py --steps 24 --reps 3  # quicker
    python benchmarks/logging_overhead.py --device cuda --steps 200 --reps 7
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl
from hydra.utils import instantiate
from pytorch_lightning.callbacks import Callback

from deconcnn.callbacks.loss_slope_logger import LossSlopeLogger
from deconcnn.callbacks.metrics_logger import MetricsJsonlLogger
from deconcnn.runconfig import compose_run_config
from deconcnn.training.module import ImageClassifier

LOGGING_HOOKS = (
    "on_train_batch_start",
    "on_before_optimizer_step",
    "on_train_batch_end",
    "on_validation_end",
    "on_train_end",
)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class StepClock(Callback):
    """Times the training loop. ``head`` goes first in the callback list, ``tail`` last."""

    def __init__(self, device: str, skip: int, role: str, shared: dict) -> None:
        self.device, self.skip, self.role, self.t = device, skip, role, shared

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.role == "head" and trainer.global_step == self.skip and "start" not in self.t:
            sync(self.device)
            self.t["start"] = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.role == "head" and "start" in self.t:
            sync(self.device)
            self.t["val_start"] = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        # Runs before LossSlopeLogger's on_validation_end: the val record counts as training time.
        if self.role == "head" and "val_start" in self.t:
            sync(self.device)
            self.t["val"] = self.t.get("val", 0.0) + time.perf_counter() - self.t.pop("val_start")

    def on_train_end(self, trainer, pl_module) -> None:
        # The tail clock runs after LossSlopeLogger's final flush.
        if self.role == "tail":
            sync(self.device)
            self.t["end"] = time.perf_counter()


class SyncCounter(Callback):
    """Turns CUDA's sync debug mode on from step ``skip`` to the end of training (warnings counted)."""

    def __init__(self, skip: int) -> None:
        self.skip = skip

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.skip:
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.set_sync_debug_mode("default")


def time_hooks(callback: Callback, totals: dict) -> None:
    """Wrap the logging callback's hooks to accumulate the host time spent inside them."""
    for name in LOGGING_HOOKS:
        hook = getattr(callback, name)

        @functools.wraps(hook)
        def timed(*args, _hook=hook, **kwargs):
            t0 = time.perf_counter()
            try:
                return _hook(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                totals["hooks"] = totals.get("hooks", 0.0) + elapsed
                totals[_hook.__name__] = totals.get(_hook.__name__, 0.0) + elapsed

        setattr(callback, name, timed)


def compose_arm(args: argparse.Namespace, logging_on: bool, run_dir: str):
    overrides = [
        "data=synthetic",
        f"data.source.num_samples={args.steps * args.batch + args.batch}",
        f"data.val_size={args.batch}",  # one validation batch: validation is not what is measured
        f"data.batch_size={args.batch}",
        f"model.width={args.width}",
        "trainer.max_epochs=1",
        "trainer.val_check_interval=0.25",
        "trainer.enable_progress_bar=false",
        f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
        "+trainer.enable_checkpointing=false",
        "~callbacks.model_checkpoint",
        "~callbacks.last_checkpoint",
        f"run_dir={run_dir}",
    ]
    if not logging_on:
        overrides.append("~callbacks.loss_slope_logger")
    return compose_run_config(overrides)


def fit_once(
    args: argparse.Namespace, logging_on: bool, datamodule, workdir: str, index: int, count_syncs: bool = False
) -> dict:
    run_dir = os.path.join(workdir, f"fit{index:03d}_{'on' if logging_on else 'off'}")
    cfg = compose_arm(args, logging_on, run_dir)
    pl.seed_everything(cfg.seed, verbose=False)
    module = ImageClassifier(
        instantiate(cfg.model),
        instantiate(cfg.optim),
        warmup_epochs=cfg.schedule.warmup_epochs,
        channels_last=cfg.channels_last,
    )
    shared: dict = {}
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    for callback in callbacks:
        if isinstance(callback, LossSlopeLogger):
            time_hooks(callback, shared)
    if count_syncs:
        callbacks = [SyncCounter(args.skip), *callbacks]
    else:
        callbacks = [
            StepClock(args.device, args.skip, "head", shared),
            *callbacks,
            StepClock(args.device, args.skip, "tail", shared),
        ]
    loggers = [instantiate(cfg.metrics_log)] if logging_on else False
    if logging_on:
        assert isinstance(loggers[0], MetricsJsonlLogger)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always" if count_syncs else "ignore")
        trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == args.steps, (trainer.global_step, args.steps)
    if count_syncs:
        syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
        return {"syncs_per_step": len(syncs) / (args.steps - args.skip)}
    timed_steps = args.steps - args.skip
    train_seconds = shared["end"] - shared["start"] - shared.get("val", 0.0)
    return {
        "steps_per_s": timed_steps / train_seconds,
        "seconds": train_seconds,
        "hook_s_per_step": shared.get("hooks", 0.0) / args.steps,
        **{f"hook:{name}": shared.get(name, 0.0) / args.steps for name in LOGGING_HOOKS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40, help="training steps per fit (one epoch)")
    parser.add_argument("--skip", type=int, default=4, help="first steps of each fit not timed")
    parser.add_argument("--reps", type=int, default=5, help="fits per arm, interleaved")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps % 4:
        parser.error("--steps must be a multiple of 4 (validation every quarter epoch)")
    if not 0 <= args.skip < args.steps // 4:
        parser.error("--skip must be below the first validation (steps / 4)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")

    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)

    from deconcnn.training.data import CifarDataModule, SyntheticSource

    datamodule = CifarDataModule(
        SyntheticSource(args.steps * args.batch + args.batch, seed=0),
        batch_size=args.batch,
        val_size=args.batch,
        seed=0,
    )

    results: dict[bool, list[dict]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="logging_overhead_") as workdir:
        fit_once(args, False, datamodule, workdir, 0)  # warm-up: allocator, kernels, data on device
        index = 1
        for rep in range(args.reps):
            for logging_on in (False, True) if rep % 2 == 0 else (True, False):
                results[logging_on].append(fit_once(args, logging_on, datamodule, workdir, index))
                index += 1

        syncs = {}
        if args.device == "cuda":  # one more fit per arm, untimed, counting synchronising CUDA calls
            syncs = {
                on: fit_once(args, on, datamodule, workdir, index + i, count_syncs=True)["syncs_per_step"]
                for i, on in enumerate((False, True))
            }

    off = [r["steps_per_s"] for r in results[False]]
    on = [r["steps_per_s"] for r in results[True]]
    med_off, med_on = statistics.median(off), statistics.median(on)
    paired = [a["seconds"] / b["seconds"] - 1 for a, b in zip(results[True], results[False])]
    hook_ms = statistics.median(r["hook_s_per_step"] for r in results[True]) * 1e3
    step_ms_off = 1e3 / med_off

    if args.device == "cuda":
        where = f"cuda ({torch.cuda.get_device_name()})"
    else:
        where = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"\n## Logging overhead: ResNet-18 width {args.width}, batch {args.batch}, {where}")
    print(
        f"{args.steps} steps per fit ({args.skip} untimed), validation every {args.steps // 4} steps "
        f"(its forward passes excluded), {args.reps} interleaved repetitions per arm, torch {torch.__version__}\n"
    )
    print("| arm | steps/s (median) | min | max | ms/step |")
    print("|---|---:|---:|---:|---:|")
    for name, values, med in (("logging off", off, med_off), ("logging on", on, med_on)):
        print(f"| {name} | {med:.3f} | {min(values):.3f} | {max(values):.3f} | {1e3 / med:.1f} |")
    print()
    print("| measure | value |")
    print("|---|---:|")
    print(f"| overhead, ratio of medians (off/on - 1) | {100 * (med_off / med_on - 1):+.2f} % |")
    print(f"| overhead, median of paired per-repetition ratios | {100 * statistics.median(paired):+.2f} % |")
    print(f"| paired ratios, min .. max | {100 * min(paired):+.2f} % .. {100 * max(paired):+.2f} % |")
    print(
        f"| host time inside the logging hooks | {hook_ms:.3f} ms/step = "
        f"{100 * hook_ms / step_ms_off:.2f} % of a step |"
    )
    per_hook = ", ".join(
        f"{name} {1e3 * statistics.median(r[f'hook:{name}'] for r in results[True]):.3f}" for name in LOGGING_HOOKS
    )
    print(f"| of which, per hook (ms/step) | {per_hook} |")
    if syncs:
        print(
            f"| synchronising CUDA calls per step (incl. 4 validations), off / on | "
            f"{syncs[False]:.2f} / {syncs[True]:.2f} |"
        )
    print("| goal | <= 2 % of step time |")


if __name__ == "__main__":
    main()
