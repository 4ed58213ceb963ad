"""Coverage of the logged Hessian-trace interval on ResNet-18 in BN train mode, across training.

Stage 1 (``collect``, the expensive part; cached in ``--cache``): trains CIFAR ResNet-18 at
``--width`` (0.125) on the project's synthetic CIFAR-shaped data (``--size`` 16 px, batch
``--batch`` 64, so one Hessian-vector product costs ~0.1 s on this 2-core machine instead of ~1 s at
32 px / 128) with SGD and AdamW from ``--model-seeds`` and stops at ``--steps`` (early, mid, late).
Per state it stores:

* ``eigsh``: scipy ``eigsh(k=1, which="LA")`` on the Hessian-vector products (float64 wrapper);
* a reference trace: ``--ref-probes`` deflated Rademacher probes on a 40-vector Lanczos basis (its
  standard error is printed next to the records'; the goal is <= 1/4 of theirs);
* ``--records`` independent records, each exactly as the monitor takes it: its own seed, its own
  Lanczos run (``lanczos_top_eig`` with the defaults), then ``--probes`` deflated probes drawn as
  ``hutchinson_trace`` draws them (same generator), kept one by one (value ``g^T B g`` and
  ``||B g||^2``), so every probe count up to ``--probes`` is the record that count would give;
* a warm-started Lanczos run from the previous state's top eigenvector (what the monitor does).

Stage 2 (``report``, instant): the monitor's rule is replayed on those probes with the library's
own functions (``plan_trace_probes``, ``trace_interval``), next to the rules it replaces:

* ``before``: the rule up to this change (a pilot probe per record plans the count, normal 95%
  quantile on the variance-bound SE);
* ``after``: the monitor's rule (count planned from the previous record, i.e. the same record
  index at the run's previous state; a pilot at a run's first state; Student-t interval with
  Satterthwaite df);
* ``fixed m``: every record with its first m probes, normal quantile vs the monitor's t interval
  (is the variance-bound SE itself honest at 1-8 probes?).

Printed: coverage of the 95% interval, mean signed error in logged SE (``(estimate - ref) / SE``),
the reference's SE / the logged SE, trace products per record, lambda_max error against eigsh
(cold and warm) and Lanczos products per record. No asserts.

    nice -n 5 .venv/bin/python benchmarks/trace_coverage.py               # collect (30-60 min) + report
    .venv/bin/python benchmarks/trace_coverage.py --report-only
    nice -n 5 .venv/bin/python benchmarks/trace_coverage.py --eig-tol 0.01  # lambda_max pass

The cache defaults to benchmarks/results/trace_coverage.json (git-ignored).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deconcnn.metrics.curvature import (
    CURVATURE_DEFAULTS,
    SharedGraphHessian,
    TraceInterval,
    _generator,
    _rademacher,
    bn_mode_context,
    cross_entropy_loss_fn,
    hutchinson_trace,
    lanczos_top_eig,
    plan_trace_probes,
    trace_interval,
)
from deconcnn.training.data import SyntheticSource, normalize
from deconcnn.training.resnet import CifarResNet18

OPTIMIZERS = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr / 50, betas=(0.9, 0.999), weight_decay=1e-2),
}


def data(seed: int, size: int, n: int, signal: float) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = SyntheticSource(num_samples=n, signal=signal, noise=0.3, seed=seed).load()
    x = normalize(x)
    if size != 32:
        x = nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
    return x, y


def eigsh_top(op: SharedGraphHessian) -> float:
    """scipy's ARPACK on the same products (float64 in and out, float32 inside)."""
    lin = LinearOperator(
        (op.size, op.size),
        matvec=lambda v: op.matvec(torch.from_numpy(np.asarray(v).reshape(-1)).to(op.dtype)).double().numpy(),
        dtype=np.float64,
    )
    v0 = np.random.default_rng(0).standard_normal(op.size)
    return float(eigsh(lin, k=1, which="LA", tol=1e-6, ncv=20, v0=v0, return_eigenvectors=False)[0])


def probes_on_basis(op: SharedGraphHessian, basis, seed: int, count: int) -> tuple[list[float], list[float]]:
    """``count`` deflated probes drawn exactly as ``hutchinson_trace(seed=seed)`` draws them."""
    qmat = torch.stack(list(basis))
    gen = _generator(torch.device("cpu"), seed + 7919)
    values, sq_norms = [], []
    for _ in range(count):
        g = _rademacher(op.size, gen, op.device, op.dtype)
        g = g - (g @ qmat.T) @ qmat
        hg = op.matvec(g)
        bg = hg - (hg @ qmat.T) @ qmat
        values.append(float(g @ hg))
        sq_norms.append(float(bg @ bg))
    return values, sq_norms


def collect_state(model, batch, args, state_seed: int, v_prev) -> tuple[dict, torch.Tensor]:
    cfg = CURVATURE_DEFAULTS
    out: dict = {}
    with bn_mode_context(model, "train"), SharedGraphHessian(model, batch, cross_entropy_loss_fn()) as op:
        out["loss"] = float(op.loss)
        out["eigsh"] = eigsh_top(op)
        ref_eig = lanczos_top_eig(op, tol=0.0, max_iter=40, seed=10_000 + state_seed)
        ref = hutchinson_trace(
            op,
            basis=ref_eig.basis,
            exact_part=math.fsum(ref_eig.alphas),
            rel_tol=0.0,
            min_probes=args.ref_probes,
            max_probes=args.ref_probes,
            seed=20_000 + state_seed,
        )
        out["ref"], out["ref_se_bound"] = ref.estimate, ref.stderr
        out["records"] = []
        top_vec = None
        for r in range(args.records):
            seed = 1000 * state_seed + r
            eig = lanczos_top_eig(op, tol=cfg["eig_tol"], max_iter=cfg["eig_max_iter"], seed=seed)
            values, sq = probes_on_basis(op, eig.basis, seed, args.probes)
            out["records"].append(
                {
                    "seed": seed,
                    "lambda": eig.eigenvalue,
                    "eig_hvp": eig.n_hvp,
                    "eig_rel_residual": eig.rel_residual,
                    "exact_part": math.fsum(eig.alphas),
                    "rank": len(eig.basis),
                    "values": values,
                    "sq_norms": sq,
                }
            )
            top_vec = eig.eigenvector
        if v_prev is not None:
            warm = lanczos_top_eig(op, v0=v_prev, tol=cfg["eig_tol"], max_iter=cfg["eig_max_iter"], seed=state_seed)
            out["warm"] = {"lambda": warm.eigenvalue, "eig_hvp": warm.n_hvp, "rel_residual": warm.rel_residual}
    return out, top_vec


def trained_states(args):
    """(optimizer, model seed, step, model, curvature batch) for every state, in run order."""
    for opt_name in args.optimizers:
        for mseed in args.model_seeds:
            x, y = data(mseed, args.size, args.samples, args.signal)
            torch.manual_seed(mseed)
            model = CifarResNet18(width=args.width, norm="batchnorm")
            opt = OPTIMIZERS[opt_name](model.parameters(), args.lr)
            gen = torch.Generator().manual_seed(1)
            batch = (x[: args.batch], y[: args.batch])
            done = 0
            for step in args.steps:
                model.train()
                for _ in range(step - done):
                    idx = torch.randint(0, x.shape[0], (args.batch,), generator=gen)
                    opt.zero_grad()
                    nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                    opt.step()
                done = step
                yield opt_name, mseed, step, copy.deepcopy(model), batch


def collect(args) -> list[dict]:
    states: list[dict] = []
    v_prev = None
    for opt_name, mseed, step, model, batch in trained_states(args):
        if step == args.steps[0]:
            v_prev = None
        t1 = time.perf_counter()
        state_seed = len(states)
        st, v_prev = collect_state(model, batch, args, state_seed, v_prev)
        st.update({"optimizer": opt_name, "model_seed": mseed, "step": step})
        states.append(st)
        print(
            f"{opt_name} seed {mseed} step {step}: loss {st['loss']:.3f}, eigsh {st['eigsh']:.4g}, "
            f"ref trace {st['ref']:.5g} +/- {st['ref_se_bound']:.3g}; curvature {time.perf_counter() - t1:.0f} s",
            flush=True,
        )
        Path(args.cache).write_text(json.dumps({"args": vars(args), "states": states}))
    return states


def lambda_path(cache: str, eig_tol: float) -> Path:
    return Path(cache).with_suffix(f".lambda{eig_tol:g}.json")


def lambda_pass(args) -> None:
    """Lanczos with ``eig_tol`` = ``--eig-tol`` on the same states (the same training:
    deterministic on CPU), cold with the records' seeds and warm-started from the previous state's
    top eigenvector (the monitor's ``warm_start``); written next to the cache, compared with its
    eigsh values in the report."""
    path = lambda_path(args.cache, args.eig_tol)
    out: list[dict] = json.loads(path.read_text()) if path.exists() else []  # resumable
    done = {(e["optimizer"], e["model_seed"], e["step"]) for e in out}
    v_prev = None
    for i, (opt_name, mseed, step, model, batch) in enumerate(trained_states(args)):
        if step == args.steps[0]:
            v_prev = None
        if (opt_name, mseed, step) in done:
            v_prev = None  # not kept: the next state of this run starts its warm record cold
            continue
        max_iter = CURVATURE_DEFAULTS["eig_max_iter"]
        with bn_mode_context(model, "train"), SharedGraphHessian(model, batch, cross_entropy_loss_fn()) as op:
            cold = [
                lanczos_top_eig(op, tol=args.eig_tol, max_iter=max_iter, seed=1000 * i + r) for r in range(args.records)
            ]
            warm = None
            if v_prev is not None:
                w = lanczos_top_eig(op, v0=v_prev, tol=args.eig_tol, max_iter=max_iter)
                warm = [w.eigenvalue, w.n_hvp]
        v_prev = cold[0].eigenvector
        out.append(
            {
                "optimizer": opt_name,
                "model_seed": mseed,
                "step": step,
                "cold": [[e.eigenvalue, e.n_hvp] for e in cold],
                "warm": warm,
            }
        )
        print(
            f"{opt_name} seed {mseed} step {step}: eig_tol {args.eig_tol:g}, lambda "
            f"{min(e.eigenvalue for e in cold):.4g}..{max(e.eigenvalue for e in cold):.4g}, HVPs "
            f"{statistics.fmean(e.n_hvp for e in cold):.1f}, warm {warm}",
            flush=True,
        )
        path.write_text(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="benchmarks/results/trace_coverage.json")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--signal", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=0.05, help="SGD lr; AdamW gets lr / 50")
    ap.add_argument("--optimizers", nargs="+", default=["sgd", "adamw"])
    ap.add_argument("--model-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 150, 500])
    ap.add_argument("--records", type=int, default=12)
    ap.add_argument("--probes", type=int, default=8, help="probes kept per record")
    ap.add_argument("--ref-probes", type=int, default=192)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eig-tol", type=float, default=None, help="run only the lambda_max pass at this eig_tol")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
    if args.eig_tol is not None:
        lambda_pass(args)
        return
    if args.report_only:
        states = json.loads(Path(args.cache).read_text())["states"]
    else:
        states = collect(args)
    report(states, args.cache)


def replay(state: dict, record: dict, prior: float | None, rule: str, cap: int) -> tuple[TraceInterval, int, float]:
    """(interval, trace products, rel_var) of ``rule`` on one record's stored probes.

    ``before``: the rule up to this change (a pilot probe plans the count, fresh probes give the
    estimate, normal 95% quantile). ``after``: the monitor's rule (count planned from ``prior``, the
    previous record's rel_var, or a pilot when there is none; Student-t interval). Counts are capped
    at the probes stored (``cap``)."""
    cfg = CURVATURE_DEFAULTS
    values, sq, exact = record["values"], record["sq_norms"], record["exact_part"]
    if rule == "after" and prior is not None:
        m, _ = plan_trace_probes(
            prior, cfg["trace_rel_tol"], cfg["trace_min_probes"], min(cfg["trace_max_probes"], cap)
        )
        iv = trace_interval(values[:m], sq[:m], exact)
        n_hvp = m
    else:
        rel_var = 2.0 * sq[0] / (exact + values[0]) ** 2
        lo = 1 if rule == "before" else cfg["trace_min_probes"]
        m, _ = plan_trace_probes(rel_var, cfg["trace_rel_tol"], lo, min(cfg["trace_max_probes"], cap - 1))
        iv = trace_interval(values[1 : 1 + m], sq[: 1 + m], exact)
        n_hvp = m + 1
    if rule == "before":  # normal quantile
        half = 1.959963984540054 * iv.se
        iv = TraceInterval(iv.estimate, iv.se, iv.estimate - half, iv.estimate + half, math.inf)
    return iv, n_hvp, m * (iv.se / iv.estimate) ** 2


def report(states: list[dict], cache: str) -> None:
    cap = min(len(r["values"]) for s in states for r in s["records"])
    print(f"\n{len(states)} states, {sum(len(s['records']) for s in states)} records, {cap} probes stored per record")
    print(
        "\n| rule | records | 95% interval covers | mean signed error [SE] | ref SE / logged SE, median / max "
        "| trace HVPs per record |\n|---|---|---|---|---|---|"
    )
    for rule in ("before", "after"):
        rows = []
        for i, st in enumerate(states):
            prev = states[i - 1] if i and states[i - 1]["step"] < st["step"] else None
            for r, rec in enumerate(st["records"]):
                prior = None
                if prev is not None:
                    _, _, prior = replay(prev, prev["records"][r], None, rule, cap)
                iv, n_hvp, _ = replay(st, rec, prior, rule, cap)
                rows.append(
                    (iv.lo <= st["ref"] <= iv.hi, (iv.estimate - st["ref"]) / iv.se, st["ref_se_bound"] / iv.se, n_hvp)
                )
        cover, z, ratio, hvp = zip(*rows, strict=True)
        print(
            f"| {rule} | {len(rows)} | {statistics.fmean(cover):.1%} | {statistics.fmean(z):+.2f} | "
            f"{statistics.median(ratio):.2f} / {max(ratio):.2f} | {statistics.fmean(hvp):.2f} |"
        )
    for m in (1, 2, 4, cap):
        for label in ("normal", "t"):
            rows = []
            for st in states:
                for rec in st["records"]:
                    iv = trace_interval(rec["values"][:m], rec["sq_norms"][:m], rec["exact_part"])
                    half = 1.959963984540054 * iv.se if label == "normal" else iv.hi - iv.estimate
                    z = (iv.estimate - st["ref"]) / iv.se
                    rows.append((abs(iv.estimate - st["ref"]) <= half, z, st["ref_se_bound"] / iv.se, m))
            cover, z, ratio, hvp = zip(*rows, strict=True)
            print(
                f"| fixed {m}, {label} | {len(rows)} | {statistics.fmean(cover):.1%} | {statistics.fmean(z):+.2f} | "
                f"{statistics.median(ratio):.2f} / {max(ratio):.2f} | {m} |"
            )
    print(
        "\n| state | loss | eigsh | reference trace | records' lambda_max error vs eigsh, max (eig_tol 0.02) "
        "| Lanczos HVPs |\n|---|---|---|---|---|---|"
    )
    for st in states:
        errs = [abs(r["lambda"] - st["eigsh"]) / abs(st["eigsh"]) for r in st["records"]]
        hvps = statistics.fmean(r["eig_hvp"] for r in st["records"])
        print(
            f"| {st['optimizer']} seed {st['model_seed']} step {st['step']} | {st['loss']:.3g} | {st['eigsh']:.4g} | "
            f"{st['ref']:.4g} +/- {st['ref_se_bound']:.2g} | {max(errs):.2%} | {hvps:.1f} |"
        )
    for path in sorted(Path(cache).parent.glob(Path(cache).stem + ".lambda*.json")):
        lam = {(e["optimizer"], e["model_seed"], e["step"]): e for e in json.loads(path.read_text())}
        cold, warm, cold_hvp, warm_hvp = [], [], [], []
        for st in states:
            e = lam.get((st["optimizer"], st["model_seed"], st["step"]))
            if e is None:
                continue
            cold += [abs(v - st["eigsh"]) / abs(st["eigsh"]) for v, _ in e["cold"]]
            cold_hvp += [k for _, k in e["cold"]]
            if e["warm"] is not None:
                warm.append(abs(e["warm"][0] - st["eigsh"]) / abs(st["eigsh"]))
                warm_hvp.append(e["warm"][1])
        if cold:
            print(
                f"\n{path.name}: cold Lanczos, {len(cold)} records: lambda_max error vs eigsh max {max(cold):.2%}, "
                f"{sum(x > 0.01 for x in cold)} above 1%, {statistics.fmean(cold_hvp):.1f} HVPs; warm start from the "
                f"previous state, {len(warm)} records: max {max(warm, default=math.nan):.2%}, "
                f"{statistics.fmean(warm_hvp) if warm_hvp else math.nan:.1f} HVPs"
            )


if __name__ == "__main__":
    main()
