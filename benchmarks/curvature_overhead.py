"""The curvature monitor's share of a run, before and after, measured side by side in one process.

For CIFAR ResNet-18 at each width (default 0.25 and 1.0, batch 128, BN in train mode) on the
project's synthetic CIFAR-shaped data (a weak class signal keeps the loss well above 0):

1. trains ``--warmup`` SGD steps, then takes record A with the monitor's settings (its first record:
   no previous record, so a pilot probe plans the trace);
2. trains ``--between`` more steps and takes record B twice on the same parameters:
   * ``before``: the monitor up to this change (cold Lanczos start, ``eig_tol`` 0.02, a pilot
     probe plans every record's trace, at least 1 probe);
   * ``after``: the monitor now (``CURVATURE_DEFAULTS``; the trace count planned from record A's
     variance, no pilot; with ``--warm``, Lanczos started from A's top eigenvector);
3. at widths below ``--eigsh-below`` (1.0: too dear on a CPU), scipy ``eigsh`` on the same
   products, same parameters, for the lambda_max error;
4. times ``--stretch`` real training steps right after (the training seconds of the ratio).

Prints per record: products (Lanczos + trace), seconds, the share of a run at the seed's schedule
(``curvature seconds / (500 x training-step seconds)``), the price of one product in training steps
and the floor that price sets, lambda_max error against eigsh, the trace with its 95% interval. With
``--coverage CACHE`` it also prints the interval coverage that benchmarks/trace_coverage.py measured
(from its cache). No asserts.

    nice -n 5 .venv/bin/python benchmarks/curvature_overhead.py --coverage benchmarks/results/trace_coverage.json
    .venv/bin/python benchmarks/curvature_overhead.py --quick      # width 0.25, batch 32: a minute
    python benchmarks/curvature_overhead.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trace_coverage import eigsh_top
from trace_coverage import report as coverage_report

from deconcnn.metrics.curvature import (
    CURVATURE_DEFAULTS,
    SharedGraphHessian,
    bn_mode_context,
    cross_entropy_loss_fn,
    curvature_estimates,
)
from deconcnn.training.data import SyntheticSource, normalize
from deconcnn.training.resnet import CifarResNet18

SCHEDULE = 500  # the seed's curvature schedule: one record every 500 optimizer steps
BEFORE = {**CURVATURE_DEFAULTS, "eig_tol": 2e-2, "trace_min_probes": 1}  # the monitor before this change


def eigsh_top_of(model: nn.Module, batch) -> float:
    with bn_mode_context(model, "train"), SharedGraphHessian(model, batch, cross_entropy_loss_fn()) as op:
        return eigsh_top(op)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    def __init__(self, model: nn.Module, data, batch: int, device: torch.device, lr: float) -> None:
        self.model, self.batch, self.device = model, batch, device
        self.x, self.y = data
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        self.gen = torch.Generator().manual_seed(123)

    def run(self, n: int) -> list[float]:
        """``n`` real training steps; the seconds of each."""
        times = []
        for _ in range(n):
            sync(self.device)
            t0 = time.perf_counter()
            idx = torch.randint(0, self.x.shape[0], (self.batch,), generator=self.gen)
            x, y = self.x[idx].to(self.device), self.y[idx].to(self.device)
            self.model.train()
            self.opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(self.model(x), y).backward()
            self.opt.step()
            sync(self.device)
            times.append(time.perf_counter() - t0)
        return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    ap.add_argument("--batch", type=int, default=128, help="training and curvature batch size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=30, help="training steps before record A")
    ap.add_argument("--between", type=int, default=60, help="training steps between records A and B")
    ap.add_argument("--stretch", type=int, default=6, help="timed training steps after record B")
    ap.add_argument("--warm", action="store_true", help="after: start Lanczos from A's top eigenvector")
    ap.add_argument("--eigsh-below", type=float, default=1.0, help="eigsh only at widths below this")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--samples", type=int, default=16384, help="synthetic training set size")
    ap.add_argument("--signal", type=float, default=0.02, help="synthetic class signal (harder when small)")
    ap.add_argument("--coverage", default=None, help="trace_coverage.py cache to report the coverage from")
    ap.add_argument("--quick", action="store_true", help="width 0.25, batch 32, short everything")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.quick:
        args.widths, args.batch, args.warmup, args.between, args.stretch = [0.25], 32, 10, 20, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    after = dict(CURVATURE_DEFAULTS)
    print(f"# curvature_overhead: {name}, torch {torch.__version__}, batch {args.batch}, BN train mode")
    print(f"# before: {BEFORE}, cold start, pilot probe every record")
    print(f"# after:  {after}, trace count from the previous record, warm start {args.warm}")
    print(
        "\n| width | record | HVPs (Lanczos + trace) | curvature s | train step s | HVP price [steps] "
        "| share @500 | floor (HVPs x price / 500) | lambda_max | err vs eigsh | trace [95% interval] |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    sys.stdout.flush()
    x, y = SyntheticSource(num_samples=args.samples, signal=args.signal, noise=0.3).load()
    data = (normalize(x), y)
    batch = (data[0][: args.batch].to(device), data[1][: args.batch].to(device))  # as FixedBatch draws it
    for width in args.widths:
        torch.manual_seed(0)
        model = CifarResNet18(width=width, norm="batchnorm").to(device)
        trainer = Trainer(model, data, args.batch, device, args.lr)
        trainer.run(args.warmup)
        a = curvature_estimates(model, batch, seed=0, **after)
        trainer.run(args.between)
        records = {
            "before": curvature_estimates(model, batch, seed=1, **BEFORE),
            "after": curvature_estimates(
                model,
                batch,
                seed=1,
                v0=a.eig.eigenvector if args.warm else None,
                trace_rel_var=a.trace.rel_var,
                **after,
            ),
        }
        ref = eigsh_top_of(model, batch) if width < args.eigsh_below else math.nan  # the records' parameters
        step_s = statistics.median(trainer.run(args.stretch))
        for label, res in records.items():
            rec = res.record()
            # seconds per product: the record minus one forward + gradient (~ one training step)
            price = (res.seconds - step_s) / max(res.n_hvp, 1) / step_s
            print(
                f"| {width} | {label} | {res.n_hvp} ({rec['lambda_max_n_hvp']} + {rec['hessian_trace_n_hvp']}) "
                f"| {res.seconds:.1f} | {step_s:.3f} | {price:.2f} | {res.seconds / (SCHEDULE * step_s):.2%} "
                f"| {res.n_hvp * price / SCHEDULE:.2%} | {rec['lambda_max']:.4g} "
                f"| {abs(rec['lambda_max'] - ref) / abs(ref):.3%} | {rec['hessian_trace']:.4g} "
                f"[{rec['trace_lo']:.4g}, {rec['trace_hi']:.4g}] |"
            )
            sys.stdout.flush()
    if args.coverage:
        coverage_report(json.loads(Path(args.coverage).read_text())["states"], args.coverage)


if __name__ == "__main__":
    main()
