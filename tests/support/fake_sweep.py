"""Fabricate a sweep directory in the launcher's + trainer's file formats (no training).

Used by tests/sweep/test_collect.py and test_report.py, and by hand to look at the report plots
of a realistic sweep:

    python tests/support/fake_sweep.py /tmp/fake --variants 4 --lrs 3 --wds 3 --seeds 2 --steps 2000
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

VARIANTS = ("S-core", "S-adamw", "S-bn-off", "S-narrow")
KINDS = ("train", "val", "curvature", "noise", "checkpoint")


def run_id(variant: str, lr: float, wd: float, seed: int) -> str:
    return f"{variant}_lr{lr:g}_wd{wd:g}_s{seed}"


@dataclass
class FakeSweep:
    path: Path
    runs: dict[str, dict]  # run_id -> {"variant", "lr", "weight_decay", "seed", "status"}
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # run_id -> kind -> records
    missing: list[str] = field(default_factory=list)

    def total(self, kind: str) -> int:
        return sum(c.get(kind, 0) for c in self.counts.values())


def make_sweep(root: Path, *, name: str = "fake", variants=VARIANTS[:2], lrs=(0.1, 0.2),
               wds=(1e-3,), seeds=(0, 1), epochs: int = 2, steps_per_epoch: int = 8,
               curv_every: int = 4, noise_every: int = 1, diverged: dict[str, int] | None = None,
               missing=(), truncated=(), running=(), failed=(), nan_token: str = "NaN",
               manifest: bool = True, rng_seed: int = 0) -> FakeSweep:
    """``diverged``: run_id -> step where the loss goes non-finite (``nan_token`` "NaN" or "null"
    is what is written for it); ``missing``: in the manifest, no run directory; ``truncated``: the
    last line is cut in half; ``running``/``failed``: that status."""
    root = Path(root)
    diverged = diverged or {}
    rng = random.Random(rng_seed)
    sweep = FakeSweep(root, {})
    mruns = {}
    for v in variants:
        for lr in lrs:
            for wd in wds:
                for s in seeds:
                    rid = run_id(v, lr, wd, s)
                    status = ("diverged" if rid in diverged else "running" if rid in running
                              else "failed" if rid in failed else "completed")
                    sweep.runs[rid] = {"variant": v, "lr": lr, "weight_decay": wd, "seed": s,
                                       "status": status}
                    mruns[rid] = {"variant": v, "overrides": [f"experiment={v}", f"optim.lr={lr}",
                                                             f"optim.weight_decay={wd}", f"seed={s}"],
                                  "params": {"lr": lr, "weight_decay": wd, "seed": s}}
    root.mkdir(parents=True, exist_ok=True)
    if manifest:
        (root / "manifest.json").write_text(json.dumps({"sweep": name, "runs": mruns}, indent=1))
    for rid, ident in sweep.runs.items():
        if rid in missing:
            sweep.missing.append(rid)
            continue
        n_steps = epochs * steps_per_epoch
        if ident["status"] in ("running", "failed"):
            n_steps = n_steps * 2 // 3
        sweep.counts[rid] = _write_run(root / "runs" / rid, rid, ident, n_steps, steps_per_epoch,
                                       curv_every, noise_every, diverged.get(rid),
                                       rid in truncated, nan_token, rng)
    return sweep


def _fmt(rec: dict, nan_token: str) -> str:
    line = json.dumps(rec)  # NaN/Infinity tokens, as Python writes them
    if nan_token != "NaN":
        line = line.replace("-Infinity", nan_token).replace("Infinity", nan_token).replace("NaN", nan_token)
    return line


def _write_run(d: Path, rid: str, ident: dict, n_steps: int, spe: int, curv_every: int,
               noise_every: int, div_step: int | None, truncate: bool, nan_token: str,
               rng: random.Random) -> dict[str, int]:
    d.mkdir(parents=True, exist_ok=True)
    lr, wd, v = ident["lr"], ident["weight_decay"], ident["variant"]
    t0 = 1.7e9 + rng.random() * 1000
    # A plausible curve: power-law decay to a floor that depends on lr/wd/variant, lognormal noise.
    vi = VARIANTS.index(v) if v in VARIANTS else 0
    floor = 0.02 + 0.05 * vi + 3 * wd + 0.05 * abs(math.log(lr / 0.1))
    tau = 30 + 20 * vi
    alpha = 0.55 + 0.1 * rng.random()
    counts = {k: 0 for k in KINDS}
    lines: list[str] = []
    quarter = max(1, spe // 4)
    last = n_steps
    if div_step is not None:
        last = min(n_steps, div_step + 3)

    def loss_at(step: int, noise: float) -> float:
        if div_step is not None and step >= div_step:
            return math.nan if step > div_step else 1e4
        base = floor + 2.3 * (1 + step / tau) ** -alpha
        return base * math.exp(noise * rng.gauss(0, 1))

    for step in range(1, last + 1):
        epoch, ef = (step - 1) // spe, step / spe
        t = t0 + 0.05 * step
        lrt = lr * min(1.0, step / (0.1 * n_steps + 1)) * 0.5 * (1 + math.cos(math.pi * step / n_steps))
        loss = loss_at(step, 0.15)
        lines.append(_fmt({"kind": "train", "step": step, "epoch": epoch, "epoch_frac": ef, "time": t,
                           "loss_train_nats": loss, "loss_train_bits": loss / math.log(2),
                           "acc_train": max(0.0, min(1.0, 1 - loss / 2.4)) if loss == loss else None,
                           "lr": lrt, "wd": wd}, nan_token))
        counts["train"] += 1
        if step % quarter == 0:
            vl = loss_at(step, 0.02) * 1.2 + 0.1 + (0.0 if wd > 5e-4 else 0.02 * ef)
            lines.append(_fmt({"kind": "val", "step": step, "epoch": epoch, "epoch_frac": ef, "time": t,
                               "loss_val_nats": vl, "loss_val_bits": vl / math.log(2),
                               "acc_val": max(0.0, min(1.0, 1 - vl / 2.4)) if vl == vl else None,
                               "grad_norm": 1 + rng.random(), "weight_norm": 50 + step * 0.01},
                              nan_token))
            counts["val"] += 1
        if step % curv_every == 0:
            lam = (2 / lr) * (1 - math.exp(-step / 300)) * (1 + 0.1 * rng.gauss(0, 1)) + 1
            if div_step is not None and step > div_step:
                lam = math.nan
            lines.append(_fmt({"kind": "curvature", "step": step, "epoch": epoch, "epoch_frac": ef,
                               "time": t, "lambda_max": lam, "lambda_max_residual": 0.01 * lam,
                               "lambda_max_n_hvp": 20, "hessian_trace": 40 * lam,
                               "hessian_trace_stderr": 0.03 * 40 * abs(lam) if lam == lam else None,
                               "hvps": 30, "bn_mode": "eval"}, nan_token))
            counts["curvature"] += 1
        if step % (noise_every * spe) == 0:
            jit = math.exp(0.2 * rng.gauss(0, 1))
            rec = {"kind": "noise", "step": step, "epoch": epoch, "epoch_frac": ef, "time": t,
                   "psd_tail": 0.1 * lr / (1 + ef) * jit, "resid_power": 0.02 * floor / (1 + 0.5 * ef) * jit,
                   "grad_var": 1e-3 * (1 + ef) / (1 + 100 * wd) * jit,
                   "noise_scale": 100 * (1 + ef) * (1 + rng.random()) * (0.1 / lr),
                   "n_losses": min(step, 512), "psd_band_lo": 0.375}
            if step < 512 and counts["noise"] == 0:
                rec.update(psd_tail=None, resid_power=None, reason="fewer than 512 losses")
            lines.append(_fmt(rec, nan_token))
            counts["noise"] += 1
        if step % spe == 0:
            lines.append(_fmt({"kind": "checkpoint", "step": step, "epoch": epoch, "epoch_frac": ef,
                               "time": t, "checkpoint_size_mb": 85.3,
                               "path": f"checkpoints/epoch={epoch}.ckpt"}, nan_token))
            counts["checkpoint"] += 1
    text = "\n".join(lines) + "\n"
    if truncate:
        # The last record is cut mid-write: it must not be counted.
        last_line = lines[-1]
        kind = json.loads(last_line.replace(nan_token, "null") if nan_token != "NaN" else last_line)["kind"]
        counts[kind] -= 1
        text = "\n".join(lines[:-1]) + "\n" + last_line[: len(last_line) // 2]
    (d / "metrics.jsonl").write_text(text)
    status = ident["status"]
    run = {"status": status, "attempt": 1, "start_time": t0,
           "end_time": None if status == "running" else t0 + 0.05 * last + 5,
           "last_step": last, "diverged_step": div_step, "host": "node01", "slurm_job_id": "1234_7",
           "error": "RuntimeError: CUDA error" if status == "failed" else None, "run_id": rid}
    (d / "run.json").write_text(json.dumps(run))
    return counts


def set_status(sweep: FakeSweep, rid: str, status: str, error: str | None = None) -> None:
    p = sweep.path / "runs" / rid / "run.json"
    run = json.loads(p.read_text())
    run.update(status=status, error=error)
    if status in ("running",):
        run["end_time"] = None
    p.write_text(json.dumps(run))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("path", type=Path)
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--lrs", type=int, default=3)
    ap.add_argument("--wds", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2000)
    a = ap.parse_args()
    lrs, wds = (0.05, 0.1, 0.2)[: a.lrs], (1e-4, 1e-3, 1e-2)[: a.wds]
    spe = 40
    div = {run_id("S-adamw", 0.2, w, s): 150 + 37 * s for w in wds for s in range(a.seeds)}
    div[run_id("S-bn-off", 0.2, 1e-4, 0)] = 900
    sw = make_sweep(a.path, name="fake-realistic", variants=VARIANTS[: a.variants], lrs=lrs, wds=wds,
                    seeds=range(a.seeds), epochs=a.steps // spe, steps_per_epoch=spe,
                    curv_every=100, noise_every=2, diverged=div,
                    missing=[run_id("S-narrow", 0.05, 1e-2, 1), run_id("S-core", 0.1, 1e-3, 0)],
                    truncated=[run_id("S-core", 0.2, 1e-4, 1)],
                    running=[run_id("S-narrow", 0.2, 1e-2, 0)], failed=[run_id("S-bn-off", 0.05, 1e-4, 1)])
    print(f"wrote {len(sw.counts)} runs ({len(sw.missing)} missing) under {a.path}")
