"""One worker of the resource probe: a run's real training loop, timed over N optimizer steps.

    python -m deconcnn.training.throughput --steps N --warmup W --sync DIR --index I \
        --run-dir DIR --out FILE -- <the run's Hydra overrides...>

The config is composed like the run's own (deconcnn.runconfig.compose_run_config) and data, module
and trainer are built by deconcnn.training.build.build_run, so the probe times what the sweep will run:
same model, data pipeline, precision, callbacks and logger. Only what does not belong to the
steady-state step is switched off: validation, checkpoint writing, the progress bar, and stopping on
divergence (a probe of a very high learning rate must still time its steps).

The k workers of one probe trial overlap by construction:
1. each runs W warm-up steps (allocator, cuDNN autotuning, the step-0 monitors), then writes
   `ready.<I>` in the sync directory and waits for `go` (or `abort`) written by the probe;
2. after `go` it times N steps between two synchronised clock reads (torch.cuda.synchronize on a
   GPU), writes its result JSON, and
3. keeps training until the probe writes `stop` (every worker has its result), so the slowest
   worker is timed under the same contention as the fastest.

The result JSON holds samples/s, CPU time / wall time, peak RSS and on a GPU the peak reserved
memory, the process's whole footprint from nvidia-smi when it can be matched by pid, and the
device-wide memory in use at the end of the timed window. Exit status: 0 ok, 3 out of memory,
4 aborted by the probe, 1 any other failure (the JSON says which, with the error).

This module imports torch; the sweep layer (deconcnn.sweep.probe) only starts it as a process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MB = 2**20
POLL_S = 0.005


class ProbeAborted(Exception):
    """The probe wrote `abort` (a sibling died before the barrier) or went away."""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def nvidia_smi_process_mb(pid: int) -> float | None:
    """This process's whole GPU footprint (context + caching allocator) as nvidia-smi sees it.

    None when nvidia-smi is absent or does not list the pid (inside a container it sees the host's
    pid namespace)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
            return float(fields[1])
    return None


class SyncDir:
    """The files through which the probe and its k workers meet."""

    def __init__(self, path: Path, index: int) -> None:
        self.path, self.index = path, index
        self.parent = os.getppid()

    def _gone(self) -> bool:
        return os.getppid() != self.parent or (self.path / "abort").exists()

    def barrier(self, timeout: float) -> None:
        (self.path / f"ready.{self.index}").touch()
        deadline = time.monotonic() + timeout
        while not (self.path / "go").exists():
            if self._gone():
                raise ProbeAborted("the probe aborted the trial before the timed window")
            if time.monotonic() > deadline:
                raise ProbeAborted(f"no `go` from the probe within {timeout:g} s")
            time.sleep(POLL_S)

    def should_stop(self) -> bool:
        return (self.path / "stop").exists() or self._gone()


def _make_timer(args: argparse.Namespace, sync: SyncDir, result: dict[str, Any]) -> Any:
    import pytorch_lightning as pl
    import torch

    class StepTimer(pl.Callback):
        """Counts optimizer steps; barrier after the warm-up; times the next N; then holds."""

        def __init__(self) -> None:
            self.batches = 0
            self.samples = 0
            self.t0 = self.cpu0 = 0.0
            self.hold_until = float("inf")

        def _sync_clock(self, pl_module: pl.LightningModule) -> tuple[float, float]:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            return time.time(), time.process_time()

        def on_train_batch_end(
            self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            self.batches += 1
            if self.batches == args.warmup:
                self._sync_clock(pl_module)
                sync.barrier(args.barrier_timeout)
                self.t0, self.cpu0 = self._sync_clock(pl_module)
            elif args.warmup < self.batches <= args.warmup + args.steps:
                self.samples += len(batch[1])
                if self.batches == args.warmup + args.steps:
                    t1, cpu1 = self._sync_clock(pl_module)
                    result.update(_measurement(pl_module, self.t0, t1, cpu1 - self.cpu0, self.samples, args.steps))
                    _write_json(args.out, result)
                    self.hold_until = time.monotonic() + args.hold_timeout
            elif self.batches > args.warmup + args.steps and (sync.should_stop() or time.monotonic() > self.hold_until):
                # Memory is read now, while all k workers are alive and hold theirs (nobody
                # exits before `stop`), and outside every worker's timed window.
                result.update(_memory(pl_module))
                _write_json(args.out, result)
                trainer.should_stop = True

    return StepTimer()


def _measurement(pl_module: Any, t0: float, t1: float, cpu_s: float, samples: int, steps: int) -> dict[str, Any]:
    import torch

    wall = t1 - t0
    return {
        "status": "ok",
        "t0": t0,
        "t1": t1,
        "wall_s": wall,
        "steps": steps,
        "samples": samples,
        "samples_per_s": samples / wall if wall > 0 else None,
        "cpu_s": cpu_s,
        "cpu_util": cpu_s / wall if wall > 0 else None,
        "threads": torch.get_num_threads(),
        **_memory(pl_module, with_smi=False),
    }


def _memory(pl_module: Any, with_smi: bool = True) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"peak_rss_mb": peak_rss_mb()}
    device = pl_module.device
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        out.update(
            max_reserved_mb=torch.cuda.max_memory_reserved(device) / MB,
            max_allocated_mb=torch.cuda.max_memory_allocated(device) / MB,
            device_used_mb=(total - free) / MB,  # every process on the device, contexts included
            process_used_mb=nvidia_smi_process_mb(os.getpid()) if with_smi else None,
        )
    return out


def _device_info() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"kind": "cuda", "name": props.name, "memory_total_mb": props.total_memory / MB}
    return {"kind": "cpu", "name": cpu_name(), "memory_total_mb": None}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def probe_config(overrides: Sequence[str], run_dir: Path) -> tuple[Any, int]:
    """The run's config, with what is not part of a training step switched off, and the run's own
    number of epochs."""
    from omegaconf import open_dict

    from deconcnn.runconfig import compose_run_config

    cfg = compose_run_config([*overrides, f"run_dir={run_dir}"])
    epochs = int(cfg.trainer.max_epochs)
    with open_dict(cfg):
        cfg.callbacks = {
            name: cb
            for name, cb in cfg.callbacks.items()
            if cb is not None and not str(cb.get("_target_", "")).endswith("ModelCheckpoint")
        }
        for cb in cfg.callbacks.values():
            if "stop_on_divergence" in cb or str(cb.get("_target_", "")).endswith("LossSlopeLogger"):
                cb.stop_on_divergence = False
        cfg.trainer.limit_val_batches = 0
        cfg.trainer.enable_checkpointing = False
        cfg.trainer.enable_progress_bar = False
        # Long enough never to end by itself (the timer stops it); the LR schedule's length is
        # steps-per-epoch x max_epochs, so the warm-up ramp is the run's own.
        cfg.trainer.max_epochs = max(int(cfg.trainer.max_epochs), 10_000)
        cfg.trainer.max_steps = 10**9
    return cfg, epochs


def measure(args: argparse.Namespace) -> int:
    result: dict[str, Any] = {
        "index": args.index,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "status": "failed",
        "error": None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    sync = SyncDir(args.sync, args.index)
    code = 1
    try:
        from deconcnn.training.build import build_run

        result["device"] = _device_info()
        cfg, epochs = probe_config(args.overrides, args.run_dir)
        result["batch_size"] = int(cfg.data.batch_size)
        datamodule, module, trainer = build_run(cfg, extra_callbacks=[_make_timer(args, sync, result)])
        datamodule.setup("fit")
        # What one real run trains, for the sweep's time estimate (launch --dry-run).
        result["samples_per_run"] = len(datamodule.train_dataloader()) * result["batch_size"] * epochs
        trainer.fit(module, datamodule=datamodule)
        if result["status"] != "ok":
            raise RuntimeError(f"training ended after fewer than {args.warmup + args.steps} steps")
        return 0
    except ProbeAborted as error:
        result.update(status="aborted", error=str(error))
        code = 4
    except BaseException as error:  # noqa: BLE001 - every failure is reported to the probe
        if result.get("status") == "ok":  # failed while holding: the measurement stands
            return 0
        oom = _is_oom(error)
        result.update(status="oom" if oom else "failed", error=f"{type(error).__name__}: {error}"[:2000])
        if not oom:
            traceback.print_exc()
        code = 3 if oom else 1
    result["peak_rss_mb"] = peak_rss_mb()
    _write_json(args.out, result)
    return code


def _is_oom(error: BaseException) -> bool:
    import torch

    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(error).lower()
    return "out of memory" in text or "cudnn_status_alloc_failed" in text


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    overrides: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(prog="python -m deconcnn.training.throughput")
    parser.add_argument("--steps", type=int, required=True, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before the barrier (>= 1)")
    parser.add_argument("--sync", type=Path, required=True, help="directory shared with the probe")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--barrier-timeout", type=float, default=1800)
    parser.add_argument(
        "--hold-timeout",
        type=float,
        default=1800,
        help="seconds to keep training after the timed window without `stop`",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")
    args.overrides = overrides
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return measure(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
