"""A recording stand-in for the SLURM commands, for tests and benchmarks at sizes no test cluster takes.

    bin_dir = install(tmp_path / "slurm", max_submit=5000)   # then PATH=bin_dir:$PATH
    calls(tmp_path / "slurm")                                # every command run: [{"cmd", "argv"}]
    end_all(tmp_path / "slurm")                              # every queued task ends COMPLETED

`sbatch`, `squeue`, `sacct`, `scancel`, `scontrol`, `sacctmgr`, `sinfo` and `srun` are this file, run by
name (symlinks). They keep one job table in `state.json` and answer the way SLURM 22.05 does for
the formats deconcnn.sweep asks for: `sbatch SCRIPT` reads `--array` and `--job-name` from the
script and prints `Submitted batch job N`, or refuses like a QOS limit once the user's queued tasks
would pass `max_submit`; `squeue`/`sacct` answer by job or array id, or by `--name`; `scancel`
removes tasks from the queue, CANCELLED; `scontrol show config` gives MaxArraySize and
MaxJobCount; `sacctmgr` gives the association's MaxSubmitJobs. `kill_launcher_after=n` makes the
n-th accepted sbatch SIGKILL its caller right after answering: a launch killed between sbatch's
answer and its manifest write. The kernel's own limit on argument length applies as it does to
the real commands.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

# srun only has to be on PATH: submitit's SlurmExecutor takes that as being on a SLURM cluster.
COMMANDS = ("sbatch", "squeue", "sacct", "scancel", "scontrol", "sacctmgr", "sinfo", "srun")
STATE = "state.json"
CALLS = "calls.jsonl"


def install(
    root: Path,
    *,
    max_array_size: int = 1001,
    max_job_count: int = 10000,
    max_submit: int | None = None,
    report_limits: bool = True,
    kill_launcher_after: int | None = None,
    refuse_after: int | None = None,
) -> Path:
    """The fake's bin directory under `root`, with a fresh job table; put it first on PATH."""
    root = Path(root)
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "fake_slurm"
    # -S: no site import, so each call starts in milliseconds (the benchmark makes thousands).
    script.write_text(f"#!{sys.executable} -S\n" + Path(__file__).read_text())
    script.chmod(0o755)
    for name in COMMANDS:
        link = bin_dir / name
        link.unlink(missing_ok=True)
        link.symlink_to(script.name)
    settings = {
        "max_array_size": max_array_size,
        "max_job_count": max_job_count,
        "max_submit": max_submit,
        "report_limits": report_limits,  # False: sacctmgr does not show max_submit (a partition QOS's, say)
        "kill_launcher_after": kill_launcher_after,
        "refuse_after": refuse_after,  # sbatch refuses every call after this many accepted ones
    }
    _save(root, {"settings": settings, "next_id": 1000, "sbatch_accepted": 0, "jobs": {}})
    (root / CALLS).write_text("")
    return bin_dir


def calls(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (Path(root) / CALLS).read_text().splitlines()]


def configure(root: Path, **settings: Any) -> None:
    """Change settings of an installed fake, keeping its job table."""
    data = _load(Path(root))
    unknown = set(settings) - set(data["settings"])
    assert not unknown, unknown
    data["settings"].update(settings)
    _save(Path(root), data)


def queue(root: Path, arrays: dict[str, int]) -> None:
    """Put arrays ({job id: tasks}) in the queue, pending, as if sbatch had taken them."""
    data = _load(Path(root))
    for job_id, tasks in arrays.items():
        data["jobs"][job_id] = {"name": "queued", "tasks": tasks, "array": True, "default": "PENDING", "states": {}}
    _save(Path(root), data)


def end_all(root: Path, state: str = "COMPLETED") -> None:
    """Every task still queued ends in `state` (squeue forgets it; sacct reports it)."""
    data = _load(Path(root))
    for job in data["jobs"].values():
        for task, task_state in list(job["states"].items()):
            if task_state in ("PENDING", "RUNNING"):
                job["states"][task] = state
        job["default"] = state if job["default"] in ("PENDING", "RUNNING") else job["default"]
    _save(Path(root), data)


def _load(root: Path) -> dict[str, Any]:
    return json.loads((root / STATE).read_text())


def _save(root: Path, data: dict[str, Any]) -> None:
    tmp = root / f"{STATE}.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, root / STATE)


def _task_state(job: dict[str, Any], task: int) -> str:
    return job["states"].get(str(task), job["default"])


def _queued(data: dict[str, Any]) -> int:
    return sum(
        1
        for job in data["jobs"].values()
        for task in range(job["tasks"])
        if _task_state(job, task) in ("PENDING", "RUNNING")
    )


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _selected(data: dict[str, Any], argv: list[str]) -> list[tuple[str, dict[str, Any], int]]:
    """(job id, job, task) of every task the --jobs ids or --name names select."""
    ids = _option(argv, "--jobs") or _option(argv, "-j")
    names = _option(argv, "--name")
    out = []
    wanted = set(ids.split(",")) if ids else None
    wanted_names = set(names.split(",")) if names else None
    for job_id, job in data["jobs"].items():
        if wanted_names is not None and job["name"] not in wanted_names:
            continue
        for task in range(job["tasks"]):
            tid = f"{job_id}_{task}" if job["array"] else job_id
            if wanted is None or job_id in wanted or tid in wanted:
                out.append((job_id, job, task))
    return out


def _tid(job_id: str, job: dict[str, Any], task: int) -> str:
    return f"{job_id}_{task}" if job["array"] else job_id


def main(cmd: str, argv: list[str]) -> int:
    root = Path(__file__).resolve().parent.parent
    with open(root / CALLS, "a") as log:
        log.write(json.dumps({"cmd": cmd, "argv": argv}) + "\n")
    data = _load(root)
    settings = data["settings"]
    if cmd == "sbatch":
        text = Path(argv[-1]).read_text()
        array = re.search(r"^#SBATCH --array=0-(\d+)", text, re.MULTILINE)
        name = re.search(r"^#SBATCH --job-name=(\S+)", text, re.MULTILINE)
        tasks = int(array.group(1)) + 1 if array else 1
        if settings["refuse_after"] is not None and data["sbatch_accepted"] >= settings["refuse_after"]:
            print(
                "sbatch: error: Batch job submission failed: Invalid account or account/partition combination",
                file=sys.stderr,
            )
            return 1
        if settings["max_submit"] is not None and _queued(data) + tasks > settings["max_submit"]:
            print(
                "sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: Batch job submission failed: "
                "Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)",
                file=sys.stderr,
            )
            return 1
        job_id = str(data["next_id"])
        data["next_id"] += 1
        data["sbatch_accepted"] += 1
        data["jobs"][job_id] = {
            "name": name.group(1) if name else "sbatch",
            "tasks": tasks,
            "array": bool(array),
            "default": "PENDING",
            "states": {},
        }
        _save(root, data)
        print(f"Submitted batch job {job_id}", flush=True)
        if data["sbatch_accepted"] == settings["kill_launcher_after"]:
            os.kill(os.getppid(), signal.SIGKILL)
        return 0
    if cmd == "squeue":
        fmt = _option(argv, "--format") or "%i|%T|%S|%r"
        for job_id, job, task in _selected(data, argv):
            state = _task_state(job, task)
            if state not in ("PENDING", "RUNNING"):
                continue
            fields = {"%i": _tid(job_id, job, task), "%T": state, "%S": "N/A", "%r": "None", "%F": job_id}
            fields |= {"%j": job["name"], "%u": os.environ.get("USER", "root")}
            print(re.sub(r"%[a-zA-Z]", lambda m, f=fields: f.get(m.group(0), ""), fmt))
        return 0
    if cmd == "sacct":
        fmt = _option(argv, "--format") or "JobID,State"
        for job_id, job, task in _selected(data, argv):
            fields = {"JobID": _tid(job_id, job, task), "State": _task_state(job, task), "JobName": job["name"]}
            print("|".join(fields[f] for f in fmt.split(",")))
        return 0
    if cmd == "scancel":
        for arg in (a for a in argv if not a.startswith("-")):
            job_id, _, task = arg.partition("_")
            job = data["jobs"].get(job_id)
            if job is None:
                print(f"scancel: error: Invalid job id {arg}", file=sys.stderr)
                continue
            for t in [int(task)] if task else range(job["tasks"]):
                if _task_state(job, t) in ("PENDING", "RUNNING"):
                    job["states"][str(t)] = "CANCELLED"
        _save(root, data)
        return 0
    if cmd == "scontrol":
        if argv[:1] == ["ping"]:
            print("Slurmctld(primary) at localhost is UP")
        elif argv[:2] == ["show", "config"]:
            print(f"MaxArraySize            = {settings['max_array_size']}")
            print(f"MaxJobCount             = {settings['max_job_count']}")
            print("ClusterName             = fake")
        return 0
    if cmd == "sacctmgr":
        if "user" in argv:
            limit = settings["max_submit"] if settings["max_submit"] is not None and settings["report_limits"] else ""
            print(f"{limit}|normal|")
        elif "qos" in argv:
            print("normal|")
        return 0
    if cmd == "sinfo":
        print("localhost|16|64000|gpu:2|infinite|debug*")
        return 0
    print(f"{cmd}: not faked", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(os.path.basename(sys.argv[0]), sys.argv[1:]))
