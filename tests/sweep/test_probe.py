"""probe-resources: the choice and stop rules on recorded measurements, probe.json as launch reads
it, and real probes on this machine's CPUs (and through the local SLURM cluster)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from deconcnn.backends import Command, processes
from deconcnn.backends.pack import THROUGHPUT_MODULE
from deconcnn.cli import run as sweep_cli
from deconcnn.sweep import launch
from deconcnn.sweep.grid import plan
from deconcnn.sweep.launch import make_packs
from deconcnn.sweep.probe.measure import measure, summarize_trial
from deconcnn.sweep.probe.rules import (
    ProbeFileError,
    ProbeSettings,
    VariantSpec,
    choose_k,
    probe_hours_per_run,
    read_probe_choice,
    stop_reason,
)
from deconcnn.sweep.sweepdir import SweepDir
from sweeps import LOCAL_SLURM, launch_json, wait_for, write_sweep

REPO = Path(__file__).resolve().parents[2]
ONE_FAKE_GPU = [o for o in LOCAL_SLURM if "gpus_per_node" not in o] + ["hydra.launcher.gpus_per_node=1"]
GB = 1024.0


def cpu_row(
    k: int,
    aggregate: float | None,
    *,
    status: str = "ok",
    rss: float = 1.0 * GB,
    limit: float = 24 * GB,
    error: str | None = None,
) -> dict:
    """A CPU measurement as summarize_trial writes it (memory: k x peak RSS against RAM)."""
    if status != "ok":
        return {"k": k, "status": status, "error": error}
    return {
        "k": k,
        "status": "ok",
        "aggregate_samples_per_s": aggregate,
        "per_run_samples_per_s": [aggregate / k] * k,
        "memory_total_mb": k * rss,
        "memory_limit_mb": limit,
        "host_memory_mb": k * rss,
        "host_memory_limit_mb": limit,
    }


def gpu_row(k: int, aggregate: float, device_used: float, total: float = 48 * GB) -> dict:
    return {
        "k": k,
        "status": "ok",
        "aggregate_samples_per_s": aggregate,
        "memory_total_mb": device_used,
        "memory_limit_mb": total,
        "host_memory_mb": k * 2 * GB,
        "host_memory_limit_mb": 128 * GB,
    }


# ---------------------------------------------------------------- the rules


def test_choice_is_the_smallest_k_within_90_percent_of_the_best():
    rows = [cpu_row(1, 1000), cpu_row(2, 1800), cpu_row(3, 2300), cpu_row(4, 2400)]
    choice = choose_k(rows)
    assert choice["ok"] and choice["k"] == 3  # 2300 >= 0.9 * 2400 > 1800
    assert "k=3" in choice["reason"] and "best (k=4" in choice["reason"]
    assert choose_k(rows, target_fraction=0.7)["k"] == 2


def test_oom_at_some_k_chooses_among_the_smaller_ones_and_stops():
    rows = [
        gpu_row(1, 3000, 6 * GB),
        gpu_row(2, 5200, 11 * GB),
        gpu_row(3, 6900, 16 * GB),
        cpu_row(4, None, status="oom", error="OutOfMemoryError: CUDA out of memory"),
    ]
    assert stop_reason(rows, max_workers=8) == "out of memory at k=4"
    choice = choose_k(rows)
    assert choice == {"k": 3, "ok": True, "reason": choice["reason"]}


def test_failure_at_k1_chooses_nothing_and_says_why():
    rows = [cpu_row(1, None, status="failed", error="ValueError: data.val_size must be in (0, 96)")]
    assert stop_reason(rows, max_workers=8) == "k=1 failed"
    choice = choose_k(rows)
    assert choice["ok"] is False and choice["k"] == 1
    assert "k=1 failed: ValueError: data.val_size" in choice["reason"]
    assert choose_k([])["ok"] is False


def test_memory_limit_cuts_k_even_where_throughput_still_rises():
    total = 48 * GB
    rows = [gpu_row(1, 3000, 0.30 * total), gpu_row(2, 5600, 0.60 * total), gpu_row(3, 7000, 0.90 * total)]
    assert stop_reason(rows, max_workers=8).startswith("memory limit: k=3 is over 85%")
    choice = choose_k(rows)  # k=3 is faster but over 85% of the device: never chosen
    assert choice["k"] == 2 and "over 85% of memory: k=3" in choice["reason"]
    # Before trying it: k=2 at 60% means k=3 would need ~90%, so the probe stops at k=2.
    assert stop_reason(rows[:2], max_workers=8).startswith("memory limit: k=3 would be over 85%")
    # Host RAM counts as well (k processes' RSS against RAM, or against SLURM's --mem).
    host_bound = [{**gpu_row(1, 3000, 0.1 * total), "host_memory_mb": 10 * GB, "host_memory_limit_mb": 16 * GB}]
    assert stop_reason(host_bound, max_workers=8).startswith("memory limit: k=2 would be over")


def test_stop_when_throughput_stops_rising_or_at_max_workers():
    assert stop_reason([cpu_row(1, 1000), cpu_row(2, 1040)], max_workers=8).startswith(
        "throughput stopped rising: +4% at k=2"
    )
    assert stop_reason([cpu_row(1, 1000), cpu_row(2, 1500)], max_workers=8) is None
    assert stop_reason([cpu_row(1, 1000), cpu_row(2, 1500)], max_workers=2) == "--max-workers 2 reached"
    # A dip counts against the best smaller k, not the last one.
    assert stop_reason([cpu_row(1, 1000), cpu_row(2, 2000), cpu_row(3, 2050)], max_workers=8) is not None


def test_summarize_gpu_trial_without_nvidia_smi_splits_the_context_evenly():
    workers = [
        {
            "status": "ok",
            "samples_per_s": 2000.0 + i,
            "cpu_util": 0.9,
            "wall_s": 1.0,
            "threads": 2,
            "peak_rss_mb": 3000.0,
            "max_reserved_mb": 2000.0,
            "device_used_mb": 5000.0,
            "process_used_mb": None,
            "device": {"kind": "cuda", "name": "NVIDIA H100", "memory_total_mb": 80000.0},
        }
        for i in range(2)
    ]
    row = summarize_trial(2, workers, host_limit_mb=64000.0)
    assert row["status"] == "ok" and row["aggregate_samples_per_s"] == pytest.approx(4001.0)
    assert row["memory_per_process_mb"] == pytest.approx(2000 + (5000 - 4000) / 2)
    assert row["memory_total_mb"] == 5000.0 and row["memory_limit_mb"] == 80000.0
    assert row["host_memory_mb"] == 6000.0
    smi = [{**w, "process_used_mb": 2600.0} for w in workers]
    row = summarize_trial(2, smi, host_limit_mb=64000.0)
    assert row["memory_per_process_mb"] == 2600.0 and row["context_mb"] == 600.0


def test_summarize_names_the_failing_worker_not_the_one_it_aborted():
    workers = [
        {"status": "aborted", "error": "the probe aborted the trial"},
        {"status": "oom", "error": "OutOfMemoryError: CUDA out of memory"},
    ]
    row = summarize_trial(2, workers, host_limit_mb=None)
    assert row["status"] == "oom" and row["error"].startswith("OutOfMemoryError")


# ---------------------------------------------------------------- probe.json, as launch reads it


def probe_file(path: Path, choices: dict[str, int]) -> Path:
    variants = {
        v: {"measurements": [cpu_row(1, 100.0)], "choice": {"k": k, "ok": True, "reason": ""}}
        for v, k in choices.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "sweep": "tiny", "variants": variants}))
    return path


def test_launch_packs_the_probes_k_per_variant(tmp_path):
    sweep_dir = SweepDir(tmp_path / "tiny")
    assert launch.packing(sweep_dir, {"S-core", "S-adamw"}, None) == {"S-core": 1, "S-adamw": 1}  # no probe
    probe_file(sweep_dir.probe_file, {"S-core": 3, "S-adamw": 2, "S-narrow": 4})
    per_pack = launch.packing(sweep_dir, {"S-core", "S-adamw"}, None)
    assert per_pack == {"S-core": 3, "S-adamw": 2}  # a launch of some variants only is fine
    assert launch.packing(sweep_dir, {"S-core"}, 1) == {"S-core": 1}  # --workers-per-gpu wins
    tasks = {v: [Command(f"{v}_s{i}", "m", (), f"/r/{v}_s{i}") for i in range(7)] for v in per_pack}
    assert sorted(len(p) for p in make_packs(tasks, per_pack)) == [1, 1, 2, 2, 2, 3, 3]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is corrupt"),
        ('["a list"]', "is corrupt (no 'variants' mapping)"),
        ('{"variants": {"S-core": {"choice": {"k": 0}}}}', "is corrupt (variant S-core: no choice k >= 1)"),
        ('{"variants": {"S-core": {"choice": {"k": "2"}}}}', "is corrupt (variant S-core: no choice k >= 1)"),
        (
            '{"variants": {"S-other": {"choice": {"k": 2}}}}',
            "was measured for variants ['S-other'], not for ['S-core']",
        ),
    ],
)
def test_a_corrupt_or_mismatched_probe_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "probe.json"
    path.write_text(content)
    with pytest.raises(ProbeFileError, match="rerun `deconcnn-sweep probe-resources`") as error:
        read_probe_choice(path, {"S-core"})
    assert message in str(error.value) and str(path) in str(error.value)


def test_launch_with_a_corrupt_probe_file_is_one_line_exit_2_and_submits_nothing(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path / "tiny.yaml")
    probe = tmp_path / "out" / "tiny" / "probe.json"
    probe.parent.mkdir(parents=True)
    probe.write_text('{"variants": {"S-adamw": {"choice": {"k": 2}}}}')
    assert launch_json(sweep_file, "--executor", "local", "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("deconcnn-sweep: error: probe file ") and err.count("\n") == 1
    assert "not for ['S-core']" in err
    assert not (tmp_path / "out" / "tiny" / "runs").exists()


def test_the_sweep_side_of_the_probe_does_not_import_torch():
    code = (
        "import sys, deconcnn.sweep.probe.runner, deconcnn.sweep.probe.measure, deconcnn.sweep.launch, deconcnn.cli; "
        "bad = [m for m in ('torch', 'pytorch_lightning') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------- real probes


def one_cpu() -> None:
    """Pin this process (and what it starts) to one CPU, so a probe sees one and gives each worker
    one torch thread: beside the suite's other processes, a worker's two threads spin on each
    other (the SIGTERM test: 9 s alone, 100 s in make test, almost all of it before the timed window)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


@pytest.fixture
def probe_on_one_cpu() -> Iterator[None]:
    """one_cpu for an in-process probe, the affinity restored after it."""
    before = os.sched_getaffinity(0)
    one_cpu()
    yield
    os.sched_setaffinity(0, before)


@pytest.mark.slow
@pytest.mark.usefixtures("probe_on_one_cpu")
def test_cpu_probe_of_the_demo_sweep_writes_json_and_plot(tmp_path, capsys):
    code = sweep_cli(
        [
            "probe-resources",
            str(REPO / "sweeps" / "demo.yaml"),
            "--executor",
            "local",
            "--max-workers",
            "2",
            "--steps",
            "4",
            "--warmup",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    out = tmp_path / "demo" / "probe.json"
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "S-core: k=1" in captured.err  # progress, one line per trial
    result = json.loads(out.read_text())
    assert result["fingerprint"] == plan(REPO / "sweeps" / "demo.yaml").sweep.fingerprint()
    assert result["device"]["kind"] == "cpu" and result["device"]["cpus"] >= 1
    assert sorted(result["variants"]) == ["S-adamw", "S-bn-off", "S-core", "S-narrow"]
    cpus = result["device"]["cpus"]
    for variant, entry in result["variants"].items():
        rows = entry["measurements"]
        assert [m["k"] for m in rows] == [1, 2][: len(rows)] and rows[0]["status"] == "ok", (variant, rows)
        for m in rows:
            assert m["status"] == "ok", (variant, m)
            assert len(m["per_run_samples_per_s"]) == m["k"] and min(m["per_run_samples_per_s"]) > 0
            assert m["aggregate_samples_per_s"] == pytest.approx(sum(m["per_run_samples_per_s"]))
            assert 100 < m["peak_rss_mb"] < 8 * GB  # a width-0.25 ResNet-18 with torch loaded
            assert m["memory_total_mb"] == pytest.approx(m["host_memory_mb"])
            assert m["memory_limit_mb"] > 1 * GB
            assert m["threads_per_run"] == max(1, cpus // m["k"])
            assert all(0 < u <= m["threads_per_run"] + 0.5 for u in m["cpu_util"])
        assert entry["choice"]["ok"] and entry["choice"]["k"] in (1, 2)
        assert entry["stopped"]
        assert entry["samples_per_run"] == 512 * 16  # the demo: 512 training images, 16 epochs
    assert sorted(probe_hours_per_run(out)) == sorted(result["variants"])
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "per GPU" in captured.out and "probe: " in captured.out


def pids_running(*words: str) -> list[int]:
    """Live processes of this user whose command line holds every word."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and all(w in cmdline for w in words) and processes.start_time(int(proc.name)):
            found.append(int(proc.name))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_probe_stopped_by_a_signal_leaves_no_process_behind(tmp_path, signum):
    probe = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deconcnn.cli",
            "probe-resources",
            str(REPO / "sweeps" / "demo.yaml"),
            "--executor",
            "local",
            "--only",
            "S-core",
            "--max-workers",
            "1",
            "--steps",
            "100000",
            "--warmup",
            "2",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # the probe's scratch, named in its workers' command lines
        preexec_fn=one_cpu,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # A worker inside its timed window: the probe wrote `go` (ready.0 is past the barrier's start).
    worker = wait_for("a throughput worker", lambda: pids_running(THROUGHPUT_MODULE, str(tmp_path)), timeout=300)
    wait_for("the timed window", lambda: list(tmp_path.glob("deconcnn-probe-*/S-core/k1/go")), timeout=300)
    measuring = pids_running("deconcnn.sweep.probe.measure", str(tmp_path))
    assert measuring, "the probe job is not found"
    started = psutil.Process(measuring[0]).children(recursive=True)  # the worker, and the server it forked from
    assert any(worker[0] == p.pid for p in started), (worker, started)
    probe.send_signal(signum)
    out, _ = probe.communicate(timeout=120)
    assert probe.returncode == 128 + signum, out[-3000:]
    wait_for(
        "the worker and the probe job to end", lambda: not pids_running(THROUGHPUT_MODULE, str(tmp_path)), timeout=30
    )
    assert not pids_running("deconcnn.sweep.probe.measure", str(tmp_path)), (measuring, worker)
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, alive
    assert not list(tmp_path.glob("deconcnn-probe-*")), "the probe's scratch directory is left"


@pytest.mark.slow
def test_a_config_failing_at_k1_is_recorded_with_its_error(tmp_path):
    bad = VariantSpec(
        "S-bad",
        "S-bad_s0",
        ("experiment=loss_lin_slope_base", "data=synthetic", "data.source.num_samples=64", "data.val_size=100"),
    )
    lines: list[str] = []
    result = measure([bad], ProbeSettings(steps=1, warmup=1, max_workers=3), report=lines.append)
    entry = result["variants"]["S-bad"]
    assert [m["k"] for m in entry["measurements"]] == [1]
    assert entry["measurements"][0]["status"] == "failed"
    assert "data.val_size must be in (0, 64)" in entry["measurements"][0]["error"]
    assert entry["stopped"] == "k=1 failed" and entry["choice"]["ok"] is False
    assert any("k=1 FAILED" in line for line in lines)


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_probe_through_slurm_runs_as_one_job_and_writes_here(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path / "tiny.yaml", seeds="0")
    out = tmp_path / "elsewhere" / "probe.json"
    code = sweep_cli(
        [
            "probe-resources",
            str(sweep_file),
            "--executor",
            "slurm",
            "--max-workers",
            "1",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--file",
            str(out),
            "--out",
            str(tmp_path),
            *ONE_FAKE_GPU,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(out.read_text())
    assert result["executor"] == "slurm" and result["job_id"]
    assert "probe running as SLURM job" in captured.err and "S-core: k=1" in captured.err
    assert result["device"]["gpu_index"] in ("0", "1")  # the node's (fake) GPU given to the job
    row = result["variants"]["S-core"]["measurements"][0]
    assert row["status"] == "ok" and row["aggregate_samples_per_s"] > 0
    assert read_probe_choice(out, {"S-core"}) == {"S-core": 1}
