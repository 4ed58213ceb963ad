"""Cost and accuracy of one curvature record, measured side by side in one process.

For CIFAR ResNet-18 at each width (default 0.25 and 1.0, batch 128) this script:

1. trains ``--warmup`` SGD steps on the project's synthetic CIFAR-shaped dataset with a weak class
   signal (CIFAR-10 itself is not needed to measure cost; the loss stays well above 0 for the
   first ~1000 steps) and times a training step (forward + backward + SGD step);
2. times one Hessian-vector product with both HVP engines (one shared ``create_graph`` graph vs
   hessian-eigenthings' ``HessianOperator``, which rebuilds the graph per product);
3. record A: our method (``deconcnn.metrics.curvature.curvature_estimates`` with the
   CurvatureMonitor defaults), the naive recipe (fresh 20-iteration ``power_iteration_one`` + 50
   Hutchinson probes, both on ``HessianOperator``) and a converged reference (hessian-eigenthings
   ``lanczos(which="LA")`` with many iterations on the shared-graph operator);
4. trains ``--between`` more steps (500: the monitor's schedule), then record B with our method,
   the same warm-started from A's eigenvector (the monitor's ``warm_start`` option), the same
   with ``trace_method="hutchinson"`` (BN models) and a reference at the same point.

Costs are reported in training steps (record seconds / training-step seconds, both measured here)
and as the implied overhead when a record is taken every 500 steps (cost / 500). No asserts.

    python benchmarks/curvature_overhead.py                 # widths 0.25 and 1.0 (slow on CPU)
    python benchmarks/curvature_overhead.py --quick         # smoke run, a few minutes
    python benchmarks/curvature_overhead.py --device cuda   # on a GPU
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

from hessian_eigenthings import HessianOperator, hutchinson, lanczos, power_iteration_one

from deconcnn.metrics.curvature import (
    CURVATURE_DEFAULTS,
    CountingOperator,
    SharedGraphHessian,
    bn_mode_context,
    cross_entropy_loss_fn,
    curvature_estimates,
)
from deconcnn.training.data import SyntheticSource, normalize
from deconcnn.training.resnet import CifarResNet18


def benchmark_data(n: int, signal: float, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The project's synthetic CIFAR-shaped set, normalised. A weak signal keeps the loss well
    above zero for hundreds of steps, so the records see mid-training curvature, not a memorised
    batch whose Hessian has collapsed (signal 0.35, the test default, is fitted in ~30 steps)."""
    x, y = SyntheticSource(num_samples=n, signal=signal, noise=noise).load()
    return normalize(x), y


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    def __init__(
        self, model: nn.Module, data, batch: int, device: torch.device, lr: float, clip: float | None = None
    ) -> None:
        self.model, self.batch, self.device, self.clip = model, batch, device, clip
        self.x, self.y = data
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        self.crit = nn.CrossEntropyLoss()
        self.gen = torch.Generator().manual_seed(123)

    def step(self) -> float:
        idx = torch.randint(0, self.x.shape[0], (self.batch,), generator=self.gen)
        x, y = self.x[idx].to(self.device), self.y[idx].to(self.device)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.crit(self.model(x), y)
        loss.backward()
        if self.clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        return loss.detach()

    def run(self, n: int) -> float:
        loss = None
        for _ in range(n):
            loss = self.step()
        sync(self.device)
        return float(loss) if loss is not None else math.nan

    def time_step(self, n: int) -> float:
        times = []
        for _ in range(n):
            sync(self.device)
            t0 = time.perf_counter()
            self.step()
            sync(self.device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def timed(device, fn, *args, **kwargs):
    sync(device)
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    sync(device)
    return out, time.perf_counter() - t0


def naive_record(model, batch, loss_fn, pi_iters: int, probes: int, seed: int):
    """Fresh power iteration + plain Hutchinson on hessian-eigenthings' HessianOperator."""
    with bn_mode_context(model, "train"):
        op = CountingOperator(HessianOperator(model, [batch], loss_fn, full_dataset=True))
        lam, _, resid, _, _ = power_iteration_one(op, max_iter=pi_iters, tol=0.0, seed=seed)
        tr = hutchinson(op, num_samples=probes, seed=seed)
    return {
        "lambda": lam,
        "rel_residual": resid / max(abs(lam), 1e-30),
        "trace": tr.estimate,
        "trace_rel_stderr": tr.stderr / max(abs(tr.estimate), 1e-30),
        "n_hvp": op.n_matvec,
    }


def reference_lambda(model, batch, loss_fn, iters: int, seed: int) -> tuple[float, float]:
    """Converged reference: hessian-eigenthings lanczos(which='LA'), many iterations."""
    with bn_mode_context(model, "train"), SharedGraphHessian(model, batch, loss_fn) as op:
        res = lanczos(op, k=1, max_iter=iters, which="LA", seed=seed + 1, reorthogonalize=True)
    lam = float(res.eigenvalues[0])
    return lam, float(res.residuals[0]) / max(abs(lam), 1e-30)


def hvp_engine_costs(model, batch, loss_fn, device, n: int) -> dict[str, float]:
    """Seconds: graph build, one HVP on the shared graph, one HVP with HessianOperator."""
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0))
    v = v.to(device)
    with bn_mode_context(model, "train"):
        op, build = timed(device, SharedGraphHessian, model, batch, loss_fn)
        op.matvec(v)  # warm-up
        _, shared = timed(device, lambda: [op.matvec(v) for _ in range(n)])
        k = 3
        _, batched = timed(device, op.matmat, torch.stack([v] * k))
        op.release()
        hop = HessianOperator(model, [batch], loss_fn, full_dataset=True)
        hop.matvec(v)
        _, rebuilt = timed(device, lambda: [hop.matvec(v) for _ in range(n)])
    return {"build": build, "shared": shared / n, "operator": rebuilt / n, "batched": batched / k, "k": k}


def fmt_row(cols, widths):
    return " | ".join(str(c).rjust(w) for c, w in zip(cols, widths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    ap.add_argument("--norm", choices=["batchnorm", "none"], default="batchnorm")
    ap.add_argument("--batch", type=int, default=128, help="training and curvature batch size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=30, help="training steps before record A")
    ap.add_argument(
        "--between", type=int, default=500, help="training steps between records A and B (the monitor's schedule: 500)"
    )
    ap.add_argument("--timing-steps", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--samples", type=int, default=16384, help="synthetic training set size")
    ap.add_argument("--signal", type=float, default=0.02, help="synthetic class signal (harder when small)")
    ap.add_argument("--noise", type=float, default=0.3, help="synthetic pixel noise")
    ap.add_argument("--eig-tol", type=float, default=None, help="default: CurvatureMonitor's")
    ap.add_argument("--trace-rel-tol", type=float, default=None)
    ap.add_argument("--trace-min-probes", type=int, default=None)
    ap.add_argument("--trace-max-probes", type=int, default=None)
    ap.add_argument("--naive-pi", type=int, default=20)
    ap.add_argument("--naive-probes", type=int, default=50)
    ap.add_argument("--ref-iters", type=int, default=60)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--probe-batch", type=int, default=None, help="probes per batched HVP call")
    ap.add_argument(
        "--also-batched",
        type=int,
        nargs="*",
        default=[],
        help="extra warm records with the trace probes batched K at a time",
    )
    ap.add_argument("--quick", action="store_true", help="width 0.25, batch 32, short everything")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    defaults = CURVATURE_DEFAULTS
    cfg = {
        "eig_tol": args.eig_tol if args.eig_tol is not None else defaults["eig_tol"],
        "eig_max_iter": defaults["eig_max_iter"],
        "trace_rel_tol": args.trace_rel_tol if args.trace_rel_tol is not None else defaults["trace_rel_tol"],
        "trace_min_probes": args.trace_min_probes
        if args.trace_min_probes is not None
        else defaults["trace_min_probes"],
        "trace_max_probes": args.trace_max_probes
        if args.trace_max_probes is not None
        else defaults["trace_max_probes"],
        "trace_method": defaults["trace_method"],
        "trace_pilot_probes": defaults["trace_pilot_probes"],
        "probe_batch": args.probe_batch if args.probe_batch is not None else defaults["probe_batch"],
    }
    if args.quick:
        args.widths, args.batch, args.warmup, args.between = [0.25], 32, 10, 20
        args.timing_steps, args.naive_pi, args.naive_probes, args.ref_iters = 4, 20, 10, 30
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"# curvature_overhead: device={name}, torch {torch.__version__}, norm={args.norm}, batch={args.batch}")
    print(f"# our method: {cfg}")
    print(
        f"# naive: power_iteration_one {args.naive_pi} iters + hutchinson {args.naive_probes} probes "
        f"(HessianOperator); reference: lanczos(which='LA', max_iter={args.ref_iters})"
    )
    sys.stdout.flush()

    loss_fn = cross_entropy_loss_fn()
    rows = []
    for width in args.widths:
        torch.manual_seed(0)
        model = CifarResNet18(width=width, norm=args.norm).to(device)
        n_params = sum(p.numel() for p in model.parameters())
        data = benchmark_data(args.samples, args.signal, args.noise)
        # the fixed curvature batch: un-augmented training samples, as FixedBatch draws them
        batch = (data[0][: args.batch].to(device), data[1][: args.batch].to(device))
        clip = 1.0 if args.norm == "none" else None  # S-bn-off clips at norm 1.0
        tr = Trainer(model, data, args.batch, device, args.lr, clip)
        t_warm0 = time.perf_counter()
        loss_a = tr.run(args.warmup)
        # Training-step time is measured on a copy right before and after each timed record, so
        # the ratio holds even when the machine's load changes; the copy keeps the model's
        # parameters where the records are taken.
        timer = Trainer(copy.deepcopy(model), data, args.batch, device, args.lr, clip)
        timer.run(2)
        step_s = timer.time_step(args.timing_steps)
        print(
            f"\n## width {width}: {n_params / 1e6:.2f} M params; train step {step_s:.3f} s "
            f"(loss {loss_a:.3f} after {args.warmup} warm-up steps, {time.perf_counter() - t_warm0:.0f} s)"
        )
        before = timer.time_step(max(2, args.timing_steps // 2))
        eng = hvp_engine_costs(model, batch, loss_fn, device, n=2 if args.quick or width >= 1 else 3)
        st = (before + timer.time_step(max(2, args.timing_steps // 2))) / 2
        print(
            f"HVP engines (training steps): graph build {eng['build'] / st:.2f}, "
            f"HVP on shared graph {eng['shared'] / st:.2f}, "
            f"batched x{eng['k']} on shared graph {eng['batched'] / st:.2f} per HVP, "
            f"HVP with HessianOperator (rebuild) {eng['operator'] / st:.2f}"
        )
        sys.stdout.flush()

        def measured(fn, *a, **kw):
            """(result, seconds, cost in training steps) with the step time taken around it."""
            before = timer.time_step(max(2, args.timing_steps // 2))
            out, sec = timed(device, fn, *a, **kw)
            after = timer.time_step(max(2, args.timing_steps // 2))
            return out, sec, sec / ((before + after) / 2)

        def ours(v0=None, **over):
            kw = {**cfg, **over}
            return measured(curvature_estimates, model, batch, v0=v0, seed=0, **kw)

        def report(label, res, sec, steps, ref):
            rec = res.record()
            err = abs(rec["lambda_max"] - ref) / abs(ref)
            row = [
                width,
                label,
                f"{steps:.1f}",
                f"{100 * steps / 500:.2f}%",
                rec["curv_n_hvp"],
                f"{rec['lambda_max_n_hvp']}+{rec['hessian_trace_n_hvp']}",
                f"{rec['lambda_max']:.4g}",
                f"{100 * err:.2f}%",
                f"{rec['lambda_max_rel_residual']:.1e}",
                f"{rec['hessian_trace']:.4g}",
                f"{100 * rec['hessian_trace_rel_stderr']:.1f}%",
                rec["hessian_trace_method"],
            ]
            rows.append(row)
            print("  ", row)
            sys.stdout.flush()

        # ---- record A: cold ----
        ref_a, ref_a_res = reference_lambda(model, batch, loss_fn, args.ref_iters, seed=0)
        print(f"reference A: lambda_max {ref_a:.6g} (rel. residual {ref_a_res:.1e})")
        res_a, sec, steps = ours()
        report("ours, cold (A)", res_a, sec, steps, ref_a)
        if not args.skip_naive:
            nv, _, steps_n = measured(naive_record, model, batch, loss_fn, args.naive_pi, args.naive_probes, 0)
            err = abs(nv["lambda"] - ref_a) / abs(ref_a)
            row = [
                width,
                f"naive {args.naive_pi} PI + {args.naive_probes} Hutch (A)",
                f"{steps_n:.1f}",
                f"{100 * steps_n / 500:.2f}%",
                nv["n_hvp"],
                f"{args.naive_pi}+{args.naive_probes}",
                f"{nv['lambda']:.4g}",
                f"{100 * err:.2f}%",
                f"{nv['rel_residual']:.1e}",
                f"{nv['trace']:.4g}",
                f"{100 * nv['trace_rel_stderr']:.1f}%",
                "hutchinson",
            ]
            rows.append(row)
            print("  ", row)
            sys.stdout.flush()

        # ---- train, then record B: warm start from A ----
        loss_b = tr.run(args.between)
        ref_b, ref_b_res = reference_lambda(model, batch, loss_fn, args.ref_iters, seed=0)
        print(
            f"after {args.between} more steps (loss {loss_b:.3f}): reference B lambda_max {ref_b:.6g} "
            f"(rel. residual {ref_b_res:.1e})"
        )
        res_b, sec, steps = ours()
        report(f"ours (B, +{args.between} steps)", res_b, sec, steps, ref_b)
        res_w, sec, steps = ours(v0=res_a.eig.eigenvector)
        report("ours + warm start from A (B)", res_w, sec, steps, ref_b)
        if args.norm == "batchnorm":
            res_h, sec, steps = ours(trace_method="hutchinson")
            report("ours, trace undeflated, probe 1 = Lanczos start (B)", res_h, sec, steps, ref_b)
        for k in args.also_batched:
            res_k, sec, steps = ours(probe_batch=k)
            report(f"ours, probes batched x{k} (B)", res_k, sec, steps, ref_b)

    hdr = [
        "width",
        "method",
        "cost [train steps]",
        "overhead @500",
        "HVPs",
        "eig+trace HVPs",
        "lambda_max",
        "err vs ref",
        "eig rel.res",
        "trace",
        "trace rel.SE",
        "trace method",
    ]
    w = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(hdr)]
    print("\n" + fmt_row(hdr, w))
    print("-+-".join("-" * x for x in w))
    for r in rows:
        print(fmt_row(r, w))


if __name__ == "__main__":
    main()
