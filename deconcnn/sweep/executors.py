"""Where runs execute: a bounded pool of processes on this machine, or SLURM job arrays via submitit.

The unit of execution is a pack: the k runs that share one GPU (k = 1 unless the probe or
--workers-per-gpu says more). Each run of a pack is its own `deconcnn-train` process with its own
log and run directory, so one run failing or being killed leaves its siblings running.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from deconcnn.runlog.atomic import write_json_atomic
from deconcnn.runlog.run_status import PROCESS_FILE, RUN_LOG, read_run_status

# hydra-submitit-launcher passes these fields to submitit unprefixed, every other one as slurm_<field>
# (its BaseSubmititLauncher.launch); the same mapping keeps its launcher configs meaning the same here.
SUBMITIT_BASE_KEYS = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb",
                      "nodes", "name", "stderr_to_stdout"}
SUBMITIT_INIT_KEYS = {"max_num_timeout"}


@dataclass(frozen=True)
class RunTask:
    """One training process: the command and where it writes."""

    run_id: str
    run_dir: str
    overrides: tuple[str, ...]

    def argv(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", "deconcnn.train", *self.overrides,
                f"hydra.run.dir={self.run_dir}", f"run_id={self.run_id}"]


def is_finished(run_dir: str | Path) -> bool:
    status = read_run_status(Path(run_dir))
    return status is not None and status.get("status") in ("completed", "diverged")


def run_pack(tasks: Sequence[RunTask], *, threads_per_run: int | None = None,
             extra_env: dict[str, str] | None = None) -> dict[str, int]:
    """Run the pack's runs concurrently, each in its own process; wait for all; return exit codes.

    Runs already completed or diverged are skipped, so a requeued pack only resumes what is left.
    """
    env = {**os.environ, **(extra_env or {})}
    if threads_per_run:
        env["OMP_NUM_THREADS"] = str(threads_per_run)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for task in tasks:
        if is_finished(task.run_dir):
            continue
        run_dir = Path(task.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / RUN_LOG, "ab") as log:
            procs[task.run_id] = subprocess.Popen(task.argv(), stdout=log, stderr=subprocess.STDOUT,
                                                  env=env, start_new_session=True)
        # Says "a new attempt started" before the run itself can rewrite run.json (start-up takes
        # seconds), so status does not read a requeued run's previous failure as final.
        write_json_atomic(run_dir / PROCESS_FILE, {"started": time.time(), "pid": procs[task.run_id].pid,
                                                  "host": socket.gethostname()})
    return {run_id: proc.wait() for run_id, proc in procs.items()}


class MpsDaemon:
    """A CUDA MPS control daemon private to one job, so k packed runs share the GPU's SMs."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="deconcnn-mps-"))
        self.env = {"CUDA_MPS_PIPE_DIRECTORY": str(self.root / "pipe"),
                    "CUDA_MPS_LOG_DIRECTORY": str(self.root / "log")}

    def __enter__(self) -> dict[str, str]:
        if shutil.which("nvidia-cuda-mps-control") is None:
            raise RuntimeError("--mps: nvidia-cuda-mps-control is not on PATH on this node")
        for directory in self.env.values():
            Path(directory).mkdir(parents=True)
        subprocess.run(["nvidia-cuda-mps-control", "-d"], env={**os.environ, **self.env}, check=True)
        return self.env

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["nvidia-cuda-mps-control"], input=b"quit\n", env={**os.environ, **self.env},
                       check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class PackJob(Checkpointable):
    """What one SLURM array task runs. Checkpointable: on preemption or timeout (submitit's USR2
    handler) the task is requeued as is, and each unfinished run resumes from its last.ckpt. This is
    the only requeue handler: train.py switches Lightning's off."""

    tasks: list[RunTask]
    mps: bool = False
    threads_per_run: int | None = None

    def __call__(self) -> dict[str, int]:
        if self.mps:
            with MpsDaemon() as mps_env:
                return run_pack(self.tasks, threads_per_run=self.threads_per_run, extra_env=mps_env)
        return run_pack(self.tasks, threads_per_run=self.threads_per_run)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        return DelayedSubmission(PackJob(self.tasks, self.mps, self.threads_per_run))


def make_packs(tasks_by_variant: dict[str, list[RunTask]], per_pack: dict[str, int]) -> list[list[RunTask]]:
    """Group runs of the same variant k at a time (the probe measures k per variant)."""
    packs = []
    for variant, tasks in tasks_by_variant.items():
        k = max(1, per_pack.get(variant, 1))
        packs.extend(tasks[i:i + k] for i in range(0, len(tasks), k))
    return packs


# ---------------------------------------------------------------- SLURM


@dataclass
class Submission:
    job_id: str          # "<array job>_<task>"
    array_job_id: str
    run_ids: list[str]
    log: str


def submitit_parameters(launcher: dict[str, Any], job_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(AutoExecutor init kwargs, update_parameters kwargs) from a hydra-submitit-launcher config."""
    init = {f"slurm_{k}": v for k, v in launcher.items() if k in SUBMITIT_INIT_KEYS}
    params = {}
    for key, value in launcher.items():
        if key in SUBMITIT_INIT_KEYS or key in ("_target_", "submitit_folder") or value is None:
            continue
        params[key if key in SUBMITIT_BASE_KEYS else f"slurm_{key}"] = value
    params["name"] = job_name
    return init, params


def submit_slurm(packs: list[list[RunTask]], *, folder: Path, launcher: dict[str, Any], job_name: str,
                 max_array_size: int, mps: bool = False) -> list[Submission]:
    """One sbatch call per chunk of at most MaxArraySize packs; returns without waiting for them."""
    init, params = submitit_parameters(launcher, job_name)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", **init)
    executor.update_parameters(**params)
    threads = params.get("cpus_per_task")
    submissions: list[Submission] = []
    for start in range(0, len(packs), max_array_size):
        chunk = packs[start:start + max_array_size]
        with executor.batch():
            jobs = [executor.submit(PackJob(pack, mps, _threads(threads, len(pack)))) for pack in chunk]
        for job, pack in zip(jobs, chunk):
            submissions.append(Submission(job.job_id, job.job_id.split("_")[0],
                                          [t.run_id for t in pack], str(job.paths.stdout)))
    return submissions


def _threads(cpus: int | None, runs: int) -> int | None:
    return max(1, cpus // runs) if cpus else None


# ---------------------------------------------------------------- this machine


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without importing torch."""
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [d for d in declared.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    result = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                            capture_output=True, text=True, check=False)
    return result.stdout.split() if result.returncode == 0 else []


@dataclass
class LocalPool:
    """Runs packs on this machine: one pack (k runs) per GPU at a time; without GPUs, `cpu_slots`
    single-run packs at a time, the CPU cores split between them."""

    gpus: list[str] = field(default_factory=visible_gpus)
    cpu_slots: int = 1

    @property
    def slots(self) -> list[str | None]:
        return list(self.gpus) if self.gpus else [None] * self.cpu_slots

    def run(self, packs: list[list[RunTask]], on_done: Callable[[list[RunTask], dict[str, int]], None],
            mps: bool = False) -> None:
        free = list(self.slots)
        lock = threading.Condition()
        cpus = os.cpu_count() or 1

        def execute(pack: list[RunTask]) -> None:
            with lock:
                lock.wait_for(lambda: bool(free))
                slot = free.pop()
            try:
                env = {"CUDA_VISIBLE_DEVICES": slot if slot is not None else ""}
                threads = None if slot is not None else max(1, cpus // (len(self.slots) * len(pack)))
                if mps and slot is not None:
                    with MpsDaemon() as mps_env:
                        codes = run_pack(pack, threads_per_run=threads, extra_env={**env, **mps_env})
                else:
                    codes = run_pack(pack, threads_per_run=threads, extra_env=env)
                on_done(pack, codes)
            finally:
                with lock:
                    free.append(slot)
                    lock.notify()

        with ThreadPoolExecutor(max_workers=len(self.slots)) as pool:
            for future in [pool.submit(execute, pack) for pack in packs]:
                future.result()
