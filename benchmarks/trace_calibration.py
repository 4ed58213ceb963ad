"""Does the logged Hessian-trace standard error cover the error? Two-stage rule vs the old rule.

For small BN models trained a few to a few hundred SGD steps (realistic, noisy states), this script
computes a reference trace per state and then takes ``--records`` curvature records per state with
the CurvatureMonitor defaults (``CURVATURE_DEFAULTS``: deflated Hutchinson for BN, ``trace_rel_tol``
0.1, at most 16 probes), each with its own seed, twice with the same seeds (so the same Lanczos run
and basis):

* ``two-stage`` (the default, ``trace_pilot_probes=1``): one pilot probe sets the count, fresh
  probes give the estimate;
* ``sequential`` (the rule before, ``trace_pilot_probes=0``): stop at the first count with
  ``stderr <= 0.1 |estimate|``.

References: ``--model cnn`` (default) a 976-parameter BN CNN in float64 on 8x8 synthetic images,
exact trace (one product per parameter); ``--model resnet`` CIFAR ResNet-18 at ``--width`` on
``--size`` images, reference = ``--ref-probes`` (>= 400) deflated probes on a 40-vector Lanczos
basis (its standard error is printed: it must be small against the records').

Prints one row per state and a summary per rule: records; coverage (|estimate - ref| <= 2 / 1
logged SE); mean signed error z = sign(ref) (estimate - ref) / SE over the records that used
fewer probes than their state's median ("early") and more ("late") -- an honest rule has both
~0, the sequential rule reads high when it stops early; the fraction meeting ``stderr <= 0.1
|trace|`` and the median relative SE; Hessian-vector products per record for the trace and for
the whole record (Lanczos + trace), mean and median. No asserts.

``--pool P`` (for models where records are too dear): per state one Lanczos run with the defaults
and P deflated probes on its basis, drawn once; both rules are then replayed on ``--replays``
random orders of that pool (the reference is the pool's mean, unbiased given the basis), the
two-stage plan by the library's own ``_plan_probes``. Costs are trace products only.

    .venv/bin/python benchmarks/trace_calibration.py                     # ~1-2 min on 2 cores
    .venv/bin/python benchmarks/trace_calibration.py --model resnet      # ResNet-18 x0.0625, 16x16, ~45 min
    .venv/bin/python benchmarks/trace_calibration.py --model resnet --width 0.25 --size 32 --batch 128 \
        --samples 16384 --signal 0.02 --model-seeds 0 --steps 530 1030 --pool 200   # CIFAR-sized, ~30 min
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from models import two_conv_bn_cnn  # tests/support: the test's model

from deconcnn.metrics.curvature import (
    CURVATURE_DEFAULTS,
    SharedGraphHessian,
    _generator,
    _plan_probes,
    _rademacher,
    bn_mode_context,
    cross_entropy_loss_fn,
    curvature_estimates,
    hutchinson_trace,
    lanczos_top_eig,
)
from deconcnn.training.data import SyntheticSource, normalize
from deconcnn.training.resnet import CifarResNet18

RULES = {"two-stage": {"trace_pilot_probes": 1}, "sequential": {"trace_pilot_probes": 0}}


def data(seed: int, size: int, n: int, signal: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The project's synthetic CIFAR-shaped set (weak class signal), normalised, resized."""
    x, y = SyntheticSource(num_samples=n, signal=signal, noise=0.3, seed=seed).load()
    x = normalize(x)
    if size != 32:
        x = nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
    return x.to(dtype), y


def exact_trace(model: nn.Module, batch) -> tuple[float, float]:
    with bn_mode_context(model, "train"), SharedGraphHessian(model, batch, cross_entropy_loss_fn()) as op:
        eye = torch.eye(op.size, dtype=op.dtype)
        total = math.fsum(float((op.matmat(eye[a : a + 128]) * eye[a : a + 128]).sum()) for a in range(0, op.size, 128))
    return total, 0.0


def probe_reference(model: nn.Module, batch, probes: int, seed: int = 987654) -> tuple[float, float]:
    """Deflated Hutchinson with a fixed count on a 40-vector Lanczos basis (unbiased given it)."""
    with bn_mode_context(model, "train"), SharedGraphHessian(model, batch, cross_entropy_loss_fn()) as op:
        eig = lanczos_top_eig(op, tol=0.0, max_iter=40, seed=seed)
        tr = hutchinson_trace(
            op,
            basis=eig.basis,
            exact_part=math.fsum(eig.alphas),
            rel_tol=0.0,
            min_probes=probes,
            max_probes=probes,
            seed=seed,
        )
    return tr.estimate, tr.stderr


def probe_pool(model: nn.Module, batch, cfg: dict, probes: int, seed: int):
    """One Lanczos run with the record's settings, then ``probes`` deflated Rademacher probes on its
    basis: (exact Krylov part, [g^T B g], [||B g||^2])."""
    with bn_mode_context(model, "train"), SharedGraphHessian(model, batch, cross_entropy_loss_fn()) as op:
        eig = lanczos_top_eig(op, tol=cfg["eig_tol"], max_iter=cfg["eig_max_iter"], seed=seed)
        qmat = torch.stack(eig.basis)
        gen = _generator(torch.device("cpu"), seed + 7919)
        values, sq_norms = [], []
        for _ in range(probes):
            g = _rademacher(op.size, gen, op.device, op.dtype)
            g = g - (qmat @ g) @ qmat
            bg = op.matvec(g)
            bg = bg - (qmat @ bg) @ qmat
            values.append(float(g @ bg))
            sq_norms.append(float(bg @ bg))
    return math.fsum(eig.alphas), values, sq_norms


def replay(
    rule: str, exact: float, values: list[float], sq_norms: list[float], order: list[int], cfg: dict
) -> tuple[float, float, int, int]:
    """(estimate, stderr, probes in the estimate, trace products) of ``rule`` on the probes
    ``values[order[0]], values[order[1]], ...``."""
    tol, lo, hi = cfg["trace_rel_tol"], max(1, cfg["trace_min_probes"]), cfg["trace_max_probes"]
    if rule == "sequential":
        for k in range(1, hi + 1):
            sel = order[:k]
            est = exact + math.fsum(values[i] for i in sel) / k
            se = math.sqrt(2 * math.fsum(sq_norms[i] for i in sel) / k / k)
            if k >= lo and se <= tol * abs(est):
                break
        return est, se, k, k
    pilot = order[:1]
    m, _ = _plan_probes([values[i] for i in pilot], [sq_norms[i] for i in pilot], exact, tol, lo, hi)
    sel = order[1 : 1 + m]
    est = exact + math.fsum(values[i] for i in sel) / m
    se = math.sqrt(2 * math.fsum(sq_norms[i] for i in pilot + sel) / (m + 1) / m)
    return est, se, m, m + 1


def summarize(recs: list[dict], tol: float) -> dict[str, float]:
    z = [r["z"] for r in recs]
    early, late = [], []
    for state in {r["state"] for r in recs}:
        group = [r for r in recs if r["state"] == state]
        med = statistics.median(r["n_probes"] for r in group)
        early += [r["z"] for r in group if r["n_probes"] < med]
        late += [r["z"] for r in group if r["n_probes"] > med]
    tr_hvp = [r["trace_hvp"] for r in recs]
    all_hvp = [r["record_hvp"] for r in recs]
    return {
        "records": len(recs),
        "cov2": sum(abs(v) <= 2 for v in z) / len(z),
        "cov1": sum(abs(v) <= 1 for v in z) / len(z),
        "z_early": statistics.fmean(early) if early else math.nan,
        "z_late": statistics.fmean(late) if late else math.nan,
        "n_early": len(early),
        "n_late": len(late),
        "met_tol": sum(r["rel_se"] <= tol for r in recs) / len(recs),
        "rel_se_med": statistics.median(r["rel_se"] for r in recs),
        "trace_hvp_mean": statistics.fmean(tr_hvp),
        "trace_hvp_med": statistics.median(tr_hvp),
        "record_hvp_mean": statistics.fmean(all_hvp),
        "record_hvp_med": statistics.median(all_hvp),
    }


def fmt_table(hdr: list[str], rows: list[list]) -> str:
    w = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(hdr)]
    lines = [" | ".join(str(h).rjust(x) for h, x in zip(hdr, w)), "-|-".join("-" * x for x in w)]
    lines += [" | ".join(str(c).rjust(x) for c, x in zip(r, w)) for r in rows]
    return "\n".join(f"| {line} |" for line in lines)  # markdown (run_all.sh collects "|" lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["cnn", "resnet"], default="cnn")
    ap.add_argument("--width", type=float, default=0.0625, help="resnet width multiplier")
    ap.add_argument("--size", type=int, default=None, help="image size (cnn 8, resnet 16)")
    ap.add_argument("--batch", type=int, default=32, help="training and curvature batch")
    ap.add_argument("--model-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, nargs="+", default=[30, 100, 300])
    ap.add_argument("--records", type=int, default=24, help="records (seeds) per state and rule")
    ap.add_argument("--ref-probes", type=int, default=400, help="resnet reference probes")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--samples", type=int, default=2048, help="synthetic training set size")
    ap.add_argument(
        "--signal",
        type=float,
        default=0.05,
        help="synthetic class signal (curvature_overhead.py uses 16384 samples, 0.02)",
    )
    ap.add_argument("--pool", type=int, default=0, help="replay mode: probes drawn once per state (0: real records)")
    ap.add_argument("--replays", type=int, default=2000, help="replay mode: random orders per state")
    ap.add_argument(
        "--also-hutchinson",
        action="store_true",
        help="third rule: two-stage with trace_method=hutchinson (its pilot is Lanczos' free start)",
    )
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = args.size or (8 if args.model == "cnn" else 16)
    dtype = torch.float64 if args.model == "cnn" else torch.float32
    rules = dict(RULES)
    if args.also_hutchinson and not args.pool:
        rules["two-stage, undeflated"] = {"trace_pilot_probes": 1, "trace_method": "hutchinson"}
    cfg = dict(CURVATURE_DEFAULTS)
    print(
        f"# trace_calibration: model={args.model} (width {args.width if args.model == 'resnet' else '-'}), "
        f"{size}x{size}, batch {args.batch}, torch {torch.__version__}, {args.threads} thread(s)"
    )
    print(f"# records: curvature_estimates with {cfg}; rules {rules}")
    sys.stdout.flush()

    recs: dict[str, list[dict]] = {name: [] for name in rules}
    state_rows = []
    t_start = time.perf_counter()
    for mseed in args.model_seeds:
        x, y = data(mseed, size, args.samples, args.signal, dtype)
        torch.manual_seed(mseed)
        model = (two_conv_bn_cnn() if args.model == "cnn" else CifarResNet18(width=args.width)).to(dtype)
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
        gen = torch.Generator().manual_seed(1)
        batch, done = (x[: args.batch], y[: args.batch]), 0
        for step in args.steps:
            model.train()
            for _ in range(step - done):
                idx = torch.randint(0, x.shape[0], (args.batch,), generator=gen)
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
            done = step
            state = copy.deepcopy(model)
            if args.pool:
                t0 = time.perf_counter()
                exact, values, sq_norms = probe_pool(state, batch, cfg, args.pool, seed=1000 * mseed + step)
                ref = exact + statistics.fmean(values)
                ref_se = statistics.stdev(values) / math.sqrt(len(values))
                per_probe = statistics.stdev(values) / abs(ref)
                row = [
                    mseed,
                    step,
                    f"{loss.item():.3f}",
                    f"{ref:.4g}",
                    f"{ref_se:.2g}",
                    "",
                    f"{time.perf_counter() - t0:.1f}",
                    f"{100 * per_probe:.0f}%",
                ]
                rng = torch.Generator().manual_seed(mseed * 7 + step)
                need = cfg["trace_max_probes"] + 1
                for name in rules:
                    zs, hvps, ses = [], [], []
                    for _ in range(args.replays):
                        order = torch.randperm(len(values), generator=rng)[:need].tolist()
                        est, se, k, cost = replay(name, exact, values, sq_norms, order, cfg)
                        z = math.copysign(1.0, ref) * (est - ref) / se
                        recs[name].append(
                            {
                                "state": (mseed, step),
                                "z": z,
                                "n_probes": k,
                                "trace_hvp": cost,
                                "record_hvp": math.nan,
                                "rel_se": se / abs(est),
                            }
                        )
                        zs.append(z)
                        hvps.append(cost)
                        ses.append(se)
                    row += [f"{statistics.fmean(hvps):.2f}", f"{sum(abs(v) <= 2 for v in zs) / len(zs):.2f}"]
                    if name == "two-stage":
                        row[5] = f"{ref_se / statistics.median(ses):.2f}"
                state_rows.append(row)
                print("  ", row)
                sys.stdout.flush()
                continue
            t0 = time.perf_counter()
            ref, ref_se = (
                exact_trace(state, batch) if args.model == "cnn" else probe_reference(state, batch, args.ref_probes)
            )
            t_ref = time.perf_counter() - t0
            row = [mseed, step, f"{loss.item():.3f}", f"{ref:.4g}", f"{ref_se:.2g}", f"{t_ref:.1f}"]
            for name, over in rules.items():
                zs, hvps, ses = [], [], []
                for s in range(args.records):
                    r = curvature_estimates(state, batch, seed=1000 * mseed + step + 7 * s, **{**cfg, **over}).record()
                    z = math.copysign(1.0, ref) * (r["hessian_trace"] - ref) / r["hessian_trace_stderr"]
                    recs[name].append(
                        {
                            "state": (mseed, step),
                            "z": z,
                            "n_probes": r["hessian_trace_n_probes"],
                            "trace_hvp": r["hessian_trace_n_hvp"],
                            "record_hvp": r["curv_n_hvp"],
                            "rel_se": r["hessian_trace_rel_stderr"],
                        }
                    )
                    zs.append(z)
                    hvps.append(r["hessian_trace_n_hvp"])
                    ses.append(r["hessian_trace_stderr"])
                cov = sum(abs(v) <= 2 for v in zs) / len(zs)
                row += [f"{statistics.fmean(hvps):.2f}", f"{cov:.2f}"]
                if name == "two-stage":
                    row.insert(5, f"{ref_se / statistics.median(ses):.2f}")
            state_rows.append(row)
            print("  ", row)
            sys.stdout.flush()

    hdr = ["init seed", "step", "train loss", "reference", "ref SE", "ref SE / median logged SE", "ref s"]
    if args.pool:
        hdr.append("one probe's rel. SE")
    for name in rules:
        hdr += [f"{name}: trace HVPs", f"{name}: within 2 SE"]
    print("\n## per state\n")
    print(fmt_table(hdr, state_rows))

    tol = cfg["trace_rel_tol"]
    rows = []
    for name in rules:
        s = summarize(recs[name], tol)
        rows.append(
            [
                name,
                s["records"],
                f"{100 * s['cov2']:.1f}%",
                f"{100 * s['cov1']:.1f}%",
                f"{s['z_early']:+.2f} ({s['n_early']})",
                f"{s['z_late']:+.2f} ({s['n_late']})",
                f"{100 * s['met_tol']:.0f}%",
                f"{100 * s['rel_se_med']:.1f}%",
                f"{s['trace_hvp_mean']:.2f} / {s['trace_hvp_med']:g}",
                "-" if args.pool else f"{s['record_hvp_mean']:.2f} / {s['record_hvp_med']:g}",
            ]
        )
    print(f"\n## summary ({len(state_rows)} states, {time.perf_counter() - t_start:.0f} s)\n")
    print(
        fmt_table(
            [
                "rule",
                "records",
                "within 2 SE",
                "within 1 SE",
                "mean z early (n)",
                "mean z late (n)",
                f"rel SE <= {tol}",
                "median rel SE",
                "trace HVPs mean / median",
                "record HVPs mean / median",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
