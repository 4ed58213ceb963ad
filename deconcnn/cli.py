"""deconcnn-sweep: argument parsing and printing only; the work is in deconcnn.sweep."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from deconcnn.sweep.manifest import DEFAULT_OUT

EXIT_USAGE = 2
WATCH_MIN_INTERVAL_S = 30  # sacct polling is a load on the cluster's database (submitit #1759)


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deconcnn-sweep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    launch = sub.add_parser("launch", help="expand a sweep file and run or submit its runs")
    launch.add_argument("sweep_file", type=Path)
    launch.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run")
    launch.add_argument("--executor", choices=("auto", "local", "slurm"), default="auto")
    launch.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="parent of the sweep directory")
    launch.add_argument("--dry-run", action="store_true", help="list the runs, submit nothing")
    launch.add_argument("--json", action="store_true", help="with --dry-run: the runs as JSON")
    launch.add_argument("--smoke", action="store_true", help="every run shrunk to a few steps on synthetic data")
    launch.add_argument("--workers-per-gpu", type=int, help="runs packed per GPU (default: the probe's choice)")
    launch.add_argument("--only", help="a run-id glob or a variant name")
    launch.add_argument("--skip-check", action="store_true", help="submit to SLURM without a passing check")
    launch.add_argument("--mps", action="store_true", help="run a CUDA MPS daemon in each packed task")
    launch.add_argument("--parallel", type=int, help="local: concurrent runs without GPUs (default: k)")

    status = sub.add_parser("status", help="where a sweep stands")
    status.add_argument("sweep_dir", type=Path, nargs="?", default=Path("."))
    status.add_argument("--json", action="store_true")
    status.add_argument("--watch", nargs="?", type=float, const=WATCH_MIN_INTERVAL_S, metavar="SECONDS",
                        help=f"refresh every SECONDS (at least {WATCH_MIN_INTERVAL_S})")

    collect = sub.add_parser("collect", help="one tidy table per record kind, plus a runs summary")
    collect.add_argument("sweep_dir", type=Path, nargs="?", default=Path("."))
    collect.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    collect.add_argument("--out", type=Path)

    probe = sub.add_parser("probe-resources", help="measure how many runs of each variant to pack per GPU")
    probe.add_argument("sweep_file", type=Path)
    probe.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run (as launch)")
    probe.add_argument("--executor", choices=("auto", "local", "slurm"), default="auto",
                       help="slurm: one job holding one GPU, with the sweep's launcher settings")
    probe.add_argument("--max-workers", type=int, default=8, help="largest k tried (default 8)")
    probe.add_argument("--steps", type=int, default=50, help="timed optimizer steps per run (default 50)")
    probe.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    probe.add_argument("--out", type=Path, help="the JSON file (default <root>/<sweep>/probe.json; plot beside it)")
    probe.add_argument("--root", type=Path, default=Path(DEFAULT_OUT),
                       help="parent of the sweep directory, as launch --out (default results)")
    probe.add_argument("--only", help="a variant name: probe only it")

    check = sub.add_parser("check", help="the pre-launch checklist, verified on a short real run of each variant")
    check.add_argument("sweep_file", type=Path)
    check.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run (as launch)")
    check.add_argument("--executor", choices=("auto", "local", "slurm"), default="auto")
    check.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="parent of the sweep directory")
    check.add_argument("--workers-per-gpu", type=int, help="the resources decision, instead of a probe.json")

    report = sub.add_parser("report", help="the plots a researcher looks at first, with an index")
    report.add_argument("sweep_dir", type=Path, nargs="?", default=Path("."))
    report.add_argument("--out", type=Path)
    return parser


def _launch(args: argparse.Namespace) -> int:
    from deconcnn.sweep.launch import launch, plan

    started = time.perf_counter()
    launch_plan = plan(args.sweep_file, out=args.out, smoke=args.smoke, only=args.only, overrides=args.overrides)
    if args.dry_run:
        rows = launch_plan.dry_run_rows()
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            for row in rows:
                print(f"{row['run_id']:<40} {' '.join(row['overrides'])}")
            print(f"{len(rows)} runs validated in {time.perf_counter() - started:.2f} s, "
                  f"sweep directory {launch_plan.sweep_dir.path}; nothing submitted (--dry-run)")
        return 0
    if args.json:
        raise CliError("--json goes with --dry-run")
    result = launch(launch_plan, executor=args.executor, workers_per_gpu=args.workers_per_gpu,
                    skip_check=args.skip_check, mps=args.mps,
                    cpu_slots=args.parallel, progress=sys.stderr.isatty())
    skipped = ", ".join(f"{n} {state}" for state, n in sorted(result.skipped.items())) or "none"
    print(f"{result.executor}: {len(result.submitted)} runs submitted, skipped: {skipped}")
    if result.executor == "slurm" and result.submitted:
        arrays = sorted({j.split('_')[0] for j in result.job_ids})
        print(f"{result.sbatch_calls} sbatch call(s), job arrays {', '.join(arrays)}")
    print(f"sweep directory: {result.sweep_dir}  (deconcnn-sweep status {result.sweep_dir})")
    return 0


def watch_interval(requested: float) -> float:
    """Seconds between refreshes of `status --watch`: never more often than every 30 s."""
    return max(WATCH_MIN_INTERVAL_S, requested)


def _status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from deconcnn.sweep.status import render, status_json, sweep_states

    if args.json:
        print(json.dumps(status_json(args.sweep_dir), indent=1))
        return 0
    console = Console()
    if args.watch is None:
        console.print(render(args.sweep_dir, sweep_states(args.sweep_dir)))
        return 0
    interval = watch_interval(args.watch)
    with Live(render(args.sweep_dir, sweep_states(args.sweep_dir)), console=console) as live:
        while True:
            time.sleep(interval)
            live.update(render(args.sweep_dir, sweep_states(args.sweep_dir)))


def _collect(args: argparse.Namespace) -> int:
    from deconcnn.sweep.collect import collect

    print(collect(args.sweep_dir, fmt=args.format, out=args.out, progress=sys.stderr.isatty()).summary())
    return 0


def _report(args: argparse.Namespace) -> int:
    from deconcnn.sweep.report import report

    out = report(args.sweep_dir, args.out, progress=sys.stderr.isatty())
    print(f"report: {out / 'index.html'}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from rich.console import Console

    from deconcnn.sweep.probe import ProbeSettings, probe_resources, render_table

    settings = ProbeSettings(steps=args.steps, warmup=args.warmup, max_workers=args.max_workers)
    path, result = probe_resources(args.sweep_file, executor=args.executor, settings=settings, out=args.out,
                                   root=args.root, only=args.only, overrides=args.overrides)
    Console(width=None if sys.stdout.isatty() else 132).print(render_table(result))
    failed = [v for v, entry in result["variants"].items() if not entry["choice"]["ok"]]
    for variant, entry in result["variants"].items():
        print(f"{variant}: {entry['choice']['k']} per GPU ({entry['choice']['reason']})")
    print(f"probe: {path} (plot {path.with_suffix('.png')})")
    if failed:
        print(f"deconcnn-sweep: probe failed for {', '.join(failed)}: see {path}", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    from rich.console import Console

    from deconcnn.sweep.check import check_sweep, render, shrink_summary

    console = Console(width=None if sys.stdout.isatty() else 160)
    result = check_sweep(args.sweep_file, out=args.out, overrides=args.overrides, executor=args.executor,
                         workers_per_gpu=args.workers_per_gpu,
                         on_done=lambda c: print(f"check run {c.variant}: exit {c.exit_code} after "
                                                 f"{c.seconds:.0f} s ({c.run_dir})", file=sys.stderr))
    console.print(render(result))
    for line in shrink_summary(result):
        print(line)
    for item, variant, detail in result.failures():
        print(f"FAILED {item} [{variant}]: {detail}")
    print(f"check {'passed' if result.passed else 'FAILED'} in {result.seconds:.0f} s: {result.path}")
    return 0 if result.passed else 1


COMMANDS = {"launch": _launch, "status": _status, "collect": _collect, "report": _report,
            "probe-resources": _probe, "check": _check}


def run(argv: Sequence[str] | None = None) -> int:
    from deconcnn.sweep.check import CheckError
    from deconcnn.sweep.grid import SweepFileError
    from deconcnn.sweep.launch import LaunchError
    from deconcnn.sweep.manifest import SweepChanged, SweepLocked
    from deconcnn.sweep.probe import ProbeFailed, ProbeFileError
    from deconcnn.sweep.slurm import SlurmError
    from deconcnn.sweep.status import NotASweep

    parser = _parser()
    # Hydra overrides may follow options (`launch SWEEP --out d trainer.max_epochs=2`), which
    # argparse's positional matching does not allow; take them from the unrecognised arguments.
    args, extra = parser.parse_known_args(argv)
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if len(overrides) != len(extra) or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(e for e in extra if e not in overrides) or ' '.join(extra)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    try:
        return COMMANDS[args.command](args)
    except (CliError, SweepFileError, LaunchError, SweepChanged, SweepLocked, SlurmError, NotASweep,
            ProbeFileError, ProbeFailed, CheckError, FileNotFoundError) as error:
        print(f"deconcnn-sweep: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
