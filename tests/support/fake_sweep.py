"""Fabricate a sweep directory in the launcher's and the trainer's own file formats (no training).

The manifest is made by the launcher's own code (`new_manifest` over real `RunSpec`s, with a
submission per run), records carry exactly the schema's keys (deconcnn.runlog.schema), and each run's
training loss follows a planted power law in effective time, `L = c + a tau^-alpha` with
`tau` = the cumulative logged `lr` over its peak (steps at the peak LR) and multiplicative noise,
so the analysis has a known answer. Used by the collect, report, status and analyze tests, and by
hand to look at a realistic report:

    python tests/support/fake_sweep.py /tmp/fake --variants 4 --seeds 2 --steps 2000
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deconcnn.backends import processes
from deconcnn.runlog import schema
from deconcnn.runlog.records import LaunchRecord, RunSubmission
from deconcnn.runlog.run_status import PROCESS_FILE, RUN_STATUS_FILE
from deconcnn.sweep.grid import RunSpec, Sweep
from deconcnn.sweep.launch import new_manifest
from deconcnn.sweep.sweepdir import SweepDir

VARIANTS = ("S-core", "S-adamw", "S-bn-off", "S-narrow")
KINDS = tuple(schema.KINDS)
LR, WD = "optim.lr", "optim.weight_decay"
SHORT = {LR: "lr", WD: "wd", "seed": "s", "model.width": "w"}
SUBMISSION = "fake-submission"


def run_id(variant: str, lr: float, wd: float, seed: int, **extra: Any) -> str:
    params = {LR: lr, WD: wd, **{k.replace("__", "."): v for k, v in extra.items()}, "seed": seed}
    return _run_id(variant, params)


def _run_id(variant: str, params: Mapping[str, Any]) -> str:
    return "_".join(
        [
            variant,
            *(
                f"{SHORT.get(k, k)}{v:g}" if isinstance(v, float) else f"{SHORT.get(k, k)}{v}"
                for k, v in params.items()
            ),
        ]
    )


@dataclass
class FakeSweep:
    path: Path
    runs: dict[str, dict]  # run_id -> {"variant", "params", "status", "alpha", "c"}
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # run_id -> kind -> records
    missing: list[str] = field(default_factory=list)

    def total(self, kind: str) -> int:
        return sum(c.get(kind, 0) for c in self.counts.values())


def make_sweep(
    root: Path,
    *,
    name: str = "fake",
    variants: Sequence[str] = VARIANTS[:2],
    lrs: Sequence[float] | Mapping[str, Sequence[float]] = (0.1, 0.2),
    wds: Sequence[float] = (1e-3,),
    seeds: Sequence[int] = (0, 1),
    extra_axes: Mapping[str, Sequence[Any]] | None = None,
    epochs: int = 2,
    steps_per_epoch: int = 8,
    curv_every: int = 4,
    noise_every: int = 1,
    alphas: Mapping[str, float] | None = None,
    noise: float = 0.1,
    diverged: Mapping[str, int] | None = None,
    missing: Sequence[str] = (),
    lost: Sequence[str] = (),
    truncated: Sequence[str] = (),
    running: Sequence[str] = (),
    failed: Sequence[str] = (),
    nan_token: str = "NaN",
    rng_seed: int = 0,
    bad_losses: Mapping[str, Mapping[int, float]] | None = None,
    epochs_of: Mapping[str, int] | None = None,
    wrong_bits: Sequence[str] = (),
    data: str | None = None,
) -> FakeSweep:
    """``lrs``: or variant -> its own learning rates (a variant's own axis values, as in
    sweeps/demo.yaml); ``alphas``: variant -> planted power-law exponent (default 0.5 + 0.1 x its index);
    ``diverged``: run_id -> step where the loss goes non-finite (``nan_token`` "NaN" or "null" is
    what is written for it); ``missing``: never submitted; ``lost``: submitted, no run directory;
    ``truncated``: the last line is cut in half; ``running``/``failed``: that state;
    ``bad_losses``: run_id -> {step: training loss written instead of the planted one} (0, -1, NaN,
    inf: the run stays "completed"); ``epochs_of``: run_id -> its own length in epochs;
    ``wrong_bits``: runs whose loss_train_bits is logged as 3 x nats + 0.5; ``data``: what run.json
    says the runs trained on (absent when None, as in runs older than that field)."""
    root = Path(root)
    diverged = dict(diverged or {})
    alphas = dict(alphas or {v: 0.5 + 0.1 * i for i, v in enumerate(variants)})
    rng = random.Random(rng_seed)
    axes: dict[str, Sequence[Any]] = {LR: (), WD: wds, **(extra_axes or {}), "seed": seeds}
    specs, fake = [], FakeSweep(root, {})
    for variant in variants:
        axes[LR] = lrs[variant] if isinstance(lrs, Mapping) else lrs
        for values in itertools.product(*axes.values()):
            params = dict(zip(axes, values))
            rid = _run_id(variant, params)
            overrides = (f"experiment={variant}", *(f"{k}={v}" for k, v in params.items()))
            specs.append(RunSpec(rid, variant, overrides, params))
            status = (
                "diverged"
                if rid in diverged
                else "running"
                if rid in running
                else "failed"
                if rid in failed
                else "missing"
                if rid in missing
                else "lost"
                if rid in lost
                else "completed"
            )
            fake.runs[rid] = {
                "variant": variant,
                "params": params,
                "status": status,
                "alpha": alphas[variant],
                "c": 0.05 + 0.5 * params[WD] + 0.02 * abs(math.log(params[LR] / 0.1)),
            }
    sweep = Sweep(name, root / f"{name}.yaml", specs, [], list(variants), list(axes))
    manifest = new_manifest(sweep, "fake-code")
    sd = SweepDir(root)
    root.mkdir(parents=True, exist_ok=True)
    now = 1.7e9
    submitted = [rid for rid in manifest.runs if fake.runs[rid]["status"] != "missing"]
    launch = LaunchRecord(SUBMISSION, now, "local", tuple(submitted))
    gone = "local:gone:1:0.00:fake-0"  # a launch that no longer lives
    packs = [((rid,), RunSubmission(SUBMISSION, "local", now, gone, None, (rid,), None)) for rid in submitted]
    sd.write_manifest(manifest.with_submission(launch, packs))
    for rid, ident in fake.runs.items():
        if ident["status"] in ("missing", "lost"):
            fake.missing.append(rid)
            continue
        n_steps = (epochs_of or {}).get(rid, epochs) * steps_per_epoch
        if ident["status"] in ("running", "failed"):
            n_steps = n_steps * 2 // 3
        fake.counts[rid] = _write_run(
            sd.run_dir(rid),
            rid,
            ident,
            n_steps,
            steps_per_epoch,
            curv_every,
            noise_every,
            diverged.get(rid),
            rid in truncated,
            nan_token,
            noise,
            rng,
            (bad_losses or {}).get(rid, {}),
            rid in wrong_bits,
            data,
        )
        (sd.run_dir(rid) / ".hydra").mkdir()  # what Hydra saves of the composed config
        (sd.run_dir(rid) / ".hydra" / "config.yaml").write_text(f"trainer:\n  max_epochs: {epochs}\n")
    return fake


def _fmt(rec: dict, nan_token: str) -> str:
    line = json.dumps(rec)  # NaN/Infinity tokens, as Python writes them
    if nan_token != "NaN":
        line = line.replace("-Infinity", nan_token).replace("Infinity", nan_token).replace("NaN", nan_token)
    return line


def _record(kind: schema.RecordKind, stamps: dict, **values: Any) -> dict:
    """A record with every required key of its kind (null where not given)."""
    return {"kind": kind.name, **stamps, **dict.fromkeys(kind.required), **values}


def _write_run(
    d: Path,
    rid: str,
    ident: dict,
    n_steps: int,
    spe: int,
    curv_every: int,
    noise_every: int,
    div_step: int | None,
    truncate: bool,
    nan_token: str,
    noise: float,
    rng: random.Random,
    bad_losses: Mapping[int, float],
    wrong_bits: bool,
    data: str | None,
) -> dict[str, int]:
    d.mkdir(parents=True, exist_ok=True)
    lr, wd, alpha, c = ident["params"][LR], ident["params"][WD], ident["alpha"], ident["c"]
    t0 = 1.7e9 + rng.random() * 1000
    counts = dict.fromkeys(KINDS, 0)
    lines: list[str] = []
    quarter = max(1, spe // 4)
    last = n_steps if div_step is None else min(n_steps, div_step + 3)

    def loss_at(step: int, tau: float, jitter: float) -> float:
        if div_step is not None and step >= div_step:
            return math.nan if step > div_step else 1e4
        return (c + 2.3 * tau**-alpha) * math.exp(jitter * rng.gauss(0, 1))

    def stamps(step: int, done_in_epoch: int, epoch: int) -> dict:
        return {"step": step, "epoch": epoch, "epoch_frac": epoch + done_in_epoch / spe, "time": t0 + 0.05 * step}

    tau = 0.0
    for step in range(last):
        epoch, done = step // spe, step % spe + 1
        lrt = lr * 0.5 * (1 + math.cos(math.pi * step / n_steps))
        tau += lrt / lr  # the analysis's effective time (curves.time_axis)
        loss = bad_losses.get(step, loss_at(step, tau, noise))
        lines.append(
            _fmt(
                _record(
                    schema.TRAIN,
                    stamps(step, done, epoch),
                    loss_train_nats=loss,
                    loss_train_bits=3 * loss + 0.5 if wrong_bits else loss / math.log(2),
                    acc_train=max(0.0, min(1.0, 1 - loss / 2.4)) if loss == loss else None,
                    lr=lrt,
                    wd=wd,
                ),
                nan_token,
            )
        )
        counts["train"] += 1
        after = step + 1  # the weights after this batch's update
        if done % quarter == 0:
            vl = loss_at(step, tau, 0.02) * 1.2 + 0.1
            lines.append(
                _fmt(
                    _record(
                        schema.VAL,
                        stamps(after, done, epoch),
                        loss_val_nats=vl,
                        loss_val_bits=vl / math.log(2),
                        acc_val=max(0.0, min(1.0, 1 - vl / 2.4)) if vl == vl else None,
                        grad_norm=1 + rng.random(),
                        weight_norm=50 + after * 0.01,
                    ),
                    nan_token,
                )
            )
            counts["val"] += 1
        if after % curv_every == 0:
            lam = (2 / lr) * (1 - math.exp(-after / 300)) * (1 + 0.1 * rng.gauss(0, 1)) + 1
            if div_step is not None and after > div_step:
                lam = math.nan
            lines.append(
                _fmt(
                    _record(
                        schema.CURVATURE,
                        stamps(after, done, epoch),
                        lambda_max=lam,
                        lambda_max_method="lanczos_la",
                        lambda_max_residual=0.01 * lam,
                        lambda_max_n_hvp=8,
                        hessian_trace=40 * lam,
                        hessian_trace_method="deflated",
                        trace_se=0.03 * 40 * abs(lam) if lam == lam else None,
                        trace_probes=4,
                        bn_mode="train",
                    ),
                    nan_token,
                )
            )
            counts["curvature"] += 1
        if done == spe and (epoch + 1) % noise_every == 0:
            jit = math.exp(0.2 * rng.gauss(0, 1))
            values = {
                "psd_tail": 0.1 * lr / (1 + epoch) * jit,
                "resid_power": 0.02 * c * jit,
                "grad_var": 1e-3 * (1 + epoch) / (1 + 100 * wd) * jit,
                "noise_scale": 100 * (1 + epoch) * (1 + rng.random()) * (0.1 / lr),
                "n_losses": min(after, 512),
                "psd_band_lo": 0.375,
            }
            if counts["noise"] == 0:
                values.update(
                    psd_tail=None,
                    resid_power=None,
                    noise_scale=None,
                    reason=f"only {min(after, 512)} losses in the buffer (need >= 32)",
                )
            lines.append(_fmt(_record(schema.NOISE, stamps(after, done, epoch), **values), nan_token))
            counts["noise"] += 1
        if done == spe:
            lines.append(
                _fmt(
                    _record(
                        schema.CHECKPOINT,
                        stamps(after, done, epoch),
                        checkpoint_size_mb=85.3,
                        path="checkpoints/last.ckpt",
                    ),
                    nan_token,
                )
            )
            counts["checkpoint"] += 1
    text = "\n".join(lines) + "\n"
    if truncate:  # the last record is cut mid-write: it must not be counted
        last_line = lines[-1]
        counts[json.loads(last_line.replace(nan_token, "null") if nan_token != "NaN" else last_line)["kind"]] -= 1
        text = "\n".join(lines[:-1]) + "\n" + last_line[: len(last_line) // 2]
    (d / "metrics.jsonl").write_text(text)
    status = ident["status"]
    run = {
        "status": status,
        "attempt": 1,
        "start_time": t0,
        "submission_id": SUBMISSION,
        "end_time": None if status == "running" else t0 + 0.05 * last + 5,
        "last_step": last,
        "diverged_step": div_step,
        "host": "node01",
        "slurm_job_id": "1234_7",
        "error": "RuntimeError: CUDA error" if status == "failed" else None,
        "run_id": rid,
        **({"data": data} if data is not None else {}),
    }
    (d / RUN_STATUS_FILE).write_text(json.dumps(run))
    if status == "running":  # alive: this process stands for the run's
        (d / PROCESS_FILE).write_text(json.dumps(replace(processes.identity(), submission_id=SUBMISSION).to_json()))
    return counts


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("path", type=Path)
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--name", default="fake-realistic")
    ap.add_argument("--data", help="what run.json says the runs trained on")
    a = ap.parse_args()
    lrs, wds = (0.05, 0.1, 0.2), (1e-4, 1e-3, 1e-2)
    spe = 40
    div = {run_id("S-adamw", 0.2, w, s): 150 + 37 * s for w in wds for s in range(a.seeds)}
    sw = make_sweep(
        a.path,
        name=a.name,
        variants=VARIANTS[: a.variants],
        lrs=lrs,
        wds=wds,
        seeds=range(a.seeds),
        epochs=a.steps // spe,
        steps_per_epoch=spe,
        curv_every=100,
        noise_every=2,
        diverged=div,
        missing=[run_id("S-narrow", 0.05, 1e-2, 1)],
        lost=[run_id("S-core", 0.1, 1e-3, 0)],
        truncated=[run_id("S-core", 0.2, 1e-4, 1)],
        running=[run_id("S-narrow", 0.2, 1e-2, 0)],
        failed=[run_id("S-bn-off", 0.05, 1e-4, 1)],
        data=a.data,
    )
    print(f"wrote {len(sw.counts)} runs ({len(sw.missing)} without a directory) under {a.path}")
