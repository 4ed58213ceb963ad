"""deconcnn-sweep check: the plain log checks on fabricated logs, the check runs' configs, the real
check of the demo sweep, and launch refusing SLURM submission until a check passed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from deconcnn.cli import run as sweep_cli
from deconcnn.runconfig import CONF_DIR
from deconcnn.runlog.layout import CHECK_FILE
from deconcnn.sweep.check import rules as chk
from deconcnn.sweep.check.rules import (
    MEGABYTE,
    ItemResult,
    Schedule,
    check_checkpoints,
    check_curvature,
    check_curvature_estimators,
    check_log,
    check_noise,
    check_per_batch,
    check_resources,
    check_stamps,
    check_validation,
)
from deconcnn.sweep.check.runner import CheckResult, prepare_checks
from deconcnn.sweep.grid import plan
from deconcnn.sweep.launch import LaunchError, require_check
from deconcnn.sweep.sweepdir import SweepDir, code_version
from sweeps import LOCAL_SLURM, write_sweep

REPO = CONF_DIR.parent
SCHEDULE = Schedule(steps_per_epoch=8, epochs=4, val_check_interval=0.25, curvature_every=16, noise_every_epochs=2)
MONITORS = ("curvature_monitor", "noise_monitor")


# ---------------------------------------------------------------- a fabricated log that passes


def fabricate(run_dir: Path, s: Schedule = SCHEDULE, *, trace_method: str = "hutchinson") -> list[dict]:
    """The records a healthy run with schedule `s` writes, in file order, and its checkpoints."""
    spe, t = s.steps_per_epoch, [1.7e9]
    records: list[dict] = []

    def rec(kind: str, step: int, epoch: int, frac: float, **values) -> None:
        t[0] += 0.01
        records.append({"kind": kind, "step": step, "epoch": epoch, "epoch_frac": frac, "time": t[0], **values})

    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    for step in range(s.total_steps):
        epoch = step // spe
        if s.curvature_every and step % s.curvature_every == 0:
            rec(
                "curvature",
                step,
                epoch,
                epoch + (step % spe) / spe,
                lambda_max=10.0,
                lambda_max_residual=0.1,
                lambda_max_n_hvp=8,
                lambda_max_method="lanczos",
                hessian_trace=50.0,
                trace_se=2.0,
                trace_probes=4,
                hessian_trace_method=trace_method,
            )
        loss = 2.0 / (1 + step)
        rec(
            "train",
            step,
            epoch,
            (step + 1) / spe,
            loss_train_nats=loss,
            loss_train_bits=loss / math.log(2),
            acc_train=0.5,
            lr=0.1,
            wd=1e-3,
        )
        if (step + 1) % round(spe * s.val_check_interval) == 0:
            frac = (step + 1) / spe
            rec(
                "val",
                step + 1,
                epoch,
                frac,
                loss_val_nats=1.0,
                loss_val_bits=1 / math.log(2),
                acc_val=0.4,
                grad_norm=1.5,
                weight_norm=30.0,
            )
            ckpt = run_dir / "checkpoints" / "last.ckpt"
            ckpt.write_bytes(b"x" * (1000 + step))
            rec(
                "checkpoint",
                step + 1,
                epoch,
                frac,
                checkpoint_size_mb=ckpt.stat().st_size / MEGABYTE,
                path="checkpoints/last.ckpt",
            )
        if (step + 1) % spe == 0 and s.noise_every_epochs and (epoch + 1) % s.noise_every_epochs == 0:
            rec(
                "noise",
                step + 1,
                epoch,
                float(epoch + 1),
                psd_tail=None,
                resid_power=None,
                grad_var=1e-4,
                noise_scale=9.0,
                reason="only 16 losses in the window (need 32)",
            )
    return records


def test_a_healthy_fabricated_log_passes_every_item(tmp_path):
    results = check_log(fabricate(tmp_path), SCHEDULE, tmp_path)
    assert set(results) == set(chk.ITEMS) - {"run", "resources"}
    assert all(r.passed for r in results.values()), {k: r.detail for k, r in results.items() if not r.passed}


# ---------------------------------------------------------------- per-batch logger


def test_missing_step_fails_naming_it(tmp_path):
    records = [r for r in fabricate(tmp_path) if not (r["kind"] == "train" and r["step"] == 5)]
    result = check_per_batch(records, SCHEDULE)
    assert not result.passed and "steps missing: 5" in result.detail


def test_duplicated_step_fails_naming_it(tmp_path):
    records = fabricate(tmp_path)
    records.append(next(r for r in records if r["kind"] == "train" and r["step"] == 7))
    result = check_per_batch(records, SCHEDULE)
    assert not result.passed and "more than once: 7" in result.detail


def test_steps_outside_the_run_and_absent_steps_fail_together(tmp_path):
    # Used to raise TypeError: None does not sort with the integers.
    records = fabricate(tmp_path)
    records.append({**next(r for r in records if r["kind"] == "train"), "step": SCHEDULE.total_steps + 3})
    del next(r for r in records if r["kind"] == "train" and r["step"] == 2)["step"]
    result = check_per_batch(records, SCHEDULE)
    assert not result.passed and f"steps outside 0..{SCHEDULE.total_steps - 1}: [35, None]" in result.detail


def test_absent_per_batch_key_fails(tmp_path):
    records = fabricate(tmp_path)
    del next(r for r in records if r["kind"] == "train")["wd"]
    result = check_per_batch(records, SCHEDULE)
    assert not result.passed and "wd (1 records)" in result.detail


# ---------------------------------------------------------------- validation


def test_a_changed_val_check_interval_is_checked_and_said(tmp_path):
    schedule = Schedule(8, 4, 0.5, 16, 2)
    result = check_validation(fabricate(tmp_path, schedule), schedule)
    assert result.passed and result.change == "trainer.val_check_interval=0.5 (the experiment's: 0.25)"
    assert check_validation(fabricate(tmp_path), SCHEDULE).change is None
    quarter_log = fabricate(tmp_path)  # the log of a quarter-epoch run against a half-epoch config
    assert not check_validation(quarter_log, schedule).passed
    assert not check_validation(quarter_log, Schedule(8, 4, 0.3, 16, 2)).passed  # does not divide an epoch


def test_val_records_off_the_quarter_epochs_fail(tmp_path):
    records = [r for r in fabricate(tmp_path) if not (r["kind"] == "val" and r["epoch_frac"] == 1.5)]
    result = check_validation(records, SCHEDULE)
    assert not result.passed and "expected 0.25, 0.5" in result.detail


def test_zero_grad_norm_at_validation_fails(tmp_path):
    records = fabricate(tmp_path)
    next(r for r in records if r["kind"] == "val")["grad_norm"] = 0.0
    assert not check_validation(records, SCHEDULE).passed


# ---------------------------------------------------------------- curvature


def test_curvature_monitor_off_is_a_change_and_its_records_then_a_failure(tmp_path):
    schedule = Schedule(8, 4, 0.25, None, 2)
    records = fabricate(tmp_path, schedule)
    for check in (check_curvature, check_curvature_estimators):
        result = check(records, schedule)
        assert result.passed and "callbacks.curvature_monitor is off" in result.change
    result = check_curvature(fabricate(tmp_path), schedule)
    assert not result.passed and "yet the log has curvature records" in result.detail
    assert (
        "compute_every_n_steps=100 (the experiment's: 500)"
        in check_curvature(fabricate(tmp_path), SCHEDULE, configured_every=100).change
    )


def test_curvature_off_its_period_or_not_finite_fails(tmp_path):
    records = fabricate(tmp_path)
    assert check_curvature(records, SCHEDULE, 500).passed
    assert "configured 500" in check_curvature(records, SCHEDULE, 500).detail
    shifted = Schedule(8, 4, 0.25, 8, 2)
    assert "expected [0, 8, 16, 24]" in check_curvature(records, shifted).detail
    next(r for r in records if r["kind"] == "curvature")["trace_se"] = None
    result = check_curvature(records, SCHEDULE)
    assert not result.passed and "trace_se" in result.detail


def test_curvature_records_must_name_their_estimator_and_say_where_backpack_was_used(tmp_path):
    records = fabricate(tmp_path, trace_method="ggn_exact")
    result = check_curvature_estimators(records, SCHEDULE)
    assert (
        result.passed and "ggn_exact (BackPACK)" in result.detail and "BackPACK used for hessian_trace" in result.detail
    )
    assert "BackPACK not used" in check_curvature_estimators(fabricate(tmp_path), SCHEDULE).detail
    for r in records:
        r.pop("lambda_max_method", None)
    result = check_curvature_estimators(records, SCHEDULE)
    assert not result.passed and "lambda_max (no lambda_max_method)" in result.detail


def test_null_ggn_trace_needs_a_reason(tmp_path):
    records = fabricate(tmp_path)
    curv = [r for r in records if r["kind"] == "curvature"]
    for r in curv:
        r.update(ggn_trace=None, ggn_trace_reason="BackPACK: no BN in train mode")
    assert check_curvature_estimators(records, SCHEDULE).passed
    del curv[0]["ggn_trace_reason"]
    assert not check_curvature_estimators(records, SCHEDULE).passed


# ---------------------------------------------------------------- noise


def test_noise_monitor_off_or_on_another_schedule_is_checked_and_said(tmp_path):
    off = Schedule(8, 4, 0.25, 16, None)
    result = check_noise(fabricate(tmp_path, off), off)
    assert result.passed and "callbacks.noise_monitor is off" in result.change
    every = Schedule(8, 4, 0.25, 16, 1)
    result = check_noise(fabricate(tmp_path, every), every)
    assert result.passed and "log_every_n_epochs=1 (the experiment's: 2)" in result.change
    assert "after epochs [1, 2, 3, 4]" in result.detail
    assert not check_noise(fabricate(tmp_path), every).passed  # the log of another schedule


def test_noise_records_exactly_after_epochs_2_and_4(tmp_path):
    records = fabricate(tmp_path)
    assert "after epochs [2, 4]" in check_noise(records, SCHEDULE).detail
    missing = [r for r in records if not (r["kind"] == "noise" and r["step"] == 32)]
    assert not check_noise(missing, SCHEDULE).passed
    unexplained = fabricate(tmp_path)
    next(r for r in unexplained if r["kind"] == "noise")["reason"] = None
    result = check_noise(unexplained, SCHEDULE)
    assert not result.passed and "psd_tail not finite, no reason" in result.detail


# ---------------------------------------------------------------- stamps, checkpoints, resources


def test_unstamped_record_fails(tmp_path):
    records = fabricate(tmp_path)
    del next(r for r in records if r["kind"] == "noise")["time"]
    result = check_stamps(records)
    assert not result.passed and "noise: no time" in result.detail


def test_checkpoint_size_must_equal_the_file_and_every_file_is_logged(tmp_path):
    records = fabricate(tmp_path)
    assert check_checkpoints(records, tmp_path).passed
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"longer than logged" * 1000)
    result = check_checkpoints(records, tmp_path)
    assert not result.passed and "checkpoints/last.ckpt: logged" in result.detail
    records = fabricate(tmp_path)
    (tmp_path / "checkpoints" / "step000008.ckpt").write_bytes(b"x")
    result = check_checkpoints(records, tmp_path)
    assert not result.passed and "no checkpoint record: checkpoints/step000008.ckpt" in result.detail


def test_resources_from_probe_or_the_users_choice(tmp_path):
    variants = ["S-core", "S-adamw"]
    assert all(
        not r.passed and "probe-resources" in r.detail for r in check_resources(tmp_path, variants, None).values()
    )
    assert all(r.passed for r in check_resources(tmp_path, variants, 2).values())
    (tmp_path / "probe.json").write_text(json.dumps({"variants": {"S-core": {"choice": {"k": 3}}}}))
    results = check_resources(tmp_path, variants, None)
    assert results["S-core"] == ItemResult(True, "3 per GPU (probe.json)")
    assert not results["S-adamw"].passed and "S-adamw" in results["S-adamw"].detail
    # Without GPUs and without SLURM nothing is packed: no probe needed.
    unpacked = check_resources(tmp_path / "empty", variants, None, packs=False)
    assert all(r.passed and "not applicable" in r.detail for r in unpacked.values())


# ---------------------------------------------------------------- the check runs' configs


def variant_sweep(path: Path, variants: dict) -> Path:
    return write_sweep(path, seeds="0", name=path.stem, variants=variants)


def test_check_run_keeps_the_variants_config_and_schedules(tmp_path):
    sweep_file = variant_sweep(
        tmp_path / "v.yaml",
        {
            "S-core": {"experiment": "loss_lin_slope_base"},
            "half-val": {"experiment": "loss_lin_slope_base", "overrides": ["trainer.val_check_interval=0.5"]},
            **{f"no-{m}": {"experiment": "loss_lin_slope_base", "overrides": [f"~callbacks.{m}"]} for m in MONITORS},
        },
    )
    checks = {c.variant: c for c in prepare_checks(plan(sweep_file, out=tmp_path).runs, tmp_path / "check", gpu=False)}
    core = checks["S-core"].schedule
    assert (core.steps_per_epoch, core.epochs) == (8, 4)  # conf/debug/check.yaml
    assert core.val_check_interval == 0.25 and core.noise_every_epochs == 2
    assert core.curvature_every == 8 * 4 // chk.CHECK_CURVATURE_FIRINGS
    assert checks["S-core"].configured_curvature_every == 500
    assert checks["half-val"].schedule.val_check_interval == 0.5
    assert checks["no-curvature_monitor"].schedule.curvature_every is None
    assert checks["no-noise_monitor"].schedule.noise_every_epochs is None
    assert checks["S-core"].run_dir == (tmp_path / "check" / "S-core").resolve()


def test_cifar_source_settings_and_width_are_replaced_and_said_so(tmp_path):
    sweep_file = tmp_path / "cifar.yaml"  # the real sweep's shape: CIFAR-10 from a directory, width 1.0
    sweep_file.write_text(
        "overrides: [data.source.data_dir=/data/cifar]\naxes: {seed: 0}\n"
        "variants: {S-core: {experiment: loss_lin_slope_base}}\n"
    )
    (check,) = prepare_checks(plan(sweep_file, out=tmp_path).runs, tmp_path / "check", gpu=False)
    assert "data.source.data_dir=/data/cifar" not in check.command.args
    assert any("data.source.data_dir=/data/cifar" in n for n in check.notes)
    assert any("model.width 1 -> 0.125" in n for n in check.notes)
    (check,) = prepare_checks(plan(sweep_file, out=tmp_path).runs, tmp_path / "check", gpu=True)
    assert not any("model.width" in n for n in check.notes)


def test_check_json_is_what_launch_requires(tmp_path):
    sweep_file = variant_sweep(tmp_path / "tiny.yaml", {"S-core": {"experiment": "loss_lin_slope_base"}})
    launch_plan = plan(sweep_file, out=tmp_path, overrides=LOCAL_SLURM)
    checks = prepare_checks(launch_plan.runs, tmp_path / "tiny" / "check", gpu=False)
    items = {item: {"S-core": ItemResult(True, "fine")} for item in chk.ITEMS}
    result = CheckResult(
        "tiny",
        launch_plan.sweep_dir.path,
        launch_plan.sweep.fingerprint(),
        code_version(),
        "local",
        checks,
        items,
        1,
        1.0,
    )
    (tmp_path / "tiny").mkdir()
    check_file = tmp_path / "tiny" / CHECK_FILE
    check_file.write_text(json.dumps(result.to_json()))
    require_check(SweepDir(tmp_path / "tiny"), launch_plan.sweep)
    items["noise"]["S-core"] = ItemResult(False, "off")
    check_file.write_text(json.dumps(result.to_json()))
    with pytest.raises(LaunchError, match="check failed"):
        require_check(SweepDir(tmp_path / "tiny"), launch_plan.sweep)


def test_check_of_a_missing_sweep_file_is_a_one_line_error(tmp_path, capsys):
    assert sweep_cli(["check", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


# ---------------------------------------------------------------- real check runs


def _check(sweep_file: Path, out: Path, *args: str) -> tuple[int, dict]:
    code = sweep_cli(["check", str(sweep_file), "--out", str(out), *args])
    name = plan(sweep_file, out=out).sweep.name
    return code, json.loads((out / name / CHECK_FILE).read_text())


@pytest.mark.slow
def test_check_passes_on_the_demo_sweep(tmp_path, capsys):
    sweep_file = REPO / "sweeps" / "demo.yaml"
    code, result = _check(sweep_file, tmp_path, "--executor", "local", "--workers-per-gpu", "1")
    out = capsys.readouterr().out
    assert code == 0, out
    assert result["passed"] and not result["failures"]
    assert result["fingerprint"] == plan(sweep_file, out=tmp_path).sweep.fingerprint()
    assert result["code_version"] == code_version()
    assert set(result["variants"]) == {"S-core", "S-adamw", "S-bn-off", "S-narrow"}
    for entry in result["variants"].values():
        assert Path(entry["check_run_dir"]).parent == tmp_path / "demo" / "check"
    assert not (tmp_path / "demo" / "runs").exists()
    assert "check passed" in out
    require_check(SweepDir(tmp_path / "demo"), plan(sweep_file, out=tmp_path).sweep)


@pytest.mark.slow
def test_check_lists_deliberate_changes_and_fails_only_where_the_log_is_wrong(tmp_path, capsys, monkeypatch):
    # Both variants without the curvature monitor, so the runs are quick; one also validates half-epochs,
    # the other raises at step 3 (its log can never be right).
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests" / "support"))
    sweep_file = variant_sweep(
        tmp_path / "off.yaml",
        {
            "broken": {
                "experiment": "loss_lin_slope_base",
                "overrides": [
                    "~callbacks.curvature_monitor",
                    "+callbacks.boom._target_=fault_callbacks.RaiseAtStep",
                    "+callbacks.boom.step=3",
                ],
            },
            "half-val": {
                "experiment": "loss_lin_slope_base",
                "overrides": [
                    "~callbacks.curvature_monitor",
                    "~callbacks.noise_monitor",
                    "trainer.val_check_interval=0.5",
                ],
            },
        },
    )
    code, result = _check(sweep_file, tmp_path, "--executor", "local")
    out = capsys.readouterr().out
    assert code == 1
    failed = {f["item"] for f in result["failures"] if f["variant"] == "broken"}
    assert {"run", "per_batch"} <= failed
    assert not [f for f in result["failures"] if f["variant"] == "half-val"]
    changes = {(c["item"], c["variant"]) for c in result["changes"]}
    assert {
        ("curvature", "half-val"),
        ("noise", "half-val"),
        ("validation", "half-val"),
        ("curvature", "broken"),
    } <= changes
    assert "trainer.val_check_interval=0.5 (the experiment's: 0.25)" in out
    assert "CHANGED validation [half-val]" in out and "FAILED run [broken]" in out
    assert result["items"]["resources"]["half-val"]["detail"].startswith("not applicable")


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_slurm_launch_refuses_without_a_passing_check_and_submits_after_one(tmp_path, capsys):
    from deconcnn.backends.slurm import cli as slurm

    sweep_file = variant_sweep(tmp_path / "tiny.yaml", {"S-core": {"experiment": "loss_lin_slope_base"}})
    launch = ["launch", str(sweep_file), "--executor", "slurm", "--out", str(tmp_path), *LOCAL_SLURM]
    assert sweep_cli(launch) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no pre-launch check" in err and "--skip-check" in err
    assert not (tmp_path / "tiny" / "slurm").exists()

    code, result = _check(sweep_file, tmp_path, "--executor", "slurm", "--workers-per-gpu", "1", *LOCAL_SLURM)
    assert code == 0, capsys.readouterr().out
    assert result["executor"] == "slurm"

    assert sweep_cli(launch) == 0
    out = capsys.readouterr().out
    assert "1 runs submitted" in out
    manifest = SweepDir(tmp_path / "tiny").read_manifest()
    assert manifest.submissions[-1].skip_check is False
    for entry in manifest.runs.values():
        slurm.scancel(entry.submissions[-1].job_id)

    # The same check.json does not count for a changed sweep file.
    other = tmp_path / "other"
    (other / "tiny").mkdir(parents=True)
    (other / "tiny" / CHECK_FILE).write_text((tmp_path / "tiny" / CHECK_FILE).read_text())
    sweep_file.write_text(sweep_file.read_text().replace("seed: 0", "seed: 0,1"))
    assert sweep_cli(["launch", str(sweep_file), "--executor", "slurm", "--out", str(other), *LOCAL_SLURM]) == 2
    assert "another sweep file or code version" in capsys.readouterr().err
