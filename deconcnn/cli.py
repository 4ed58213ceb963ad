"""deconcnn-sweep: run an instrumented training sweep on SLURM or on this machine, and trust its numbers.

A sweep file (sweeps/*.yaml) names the variants (conf/experiment files) and the axes to sweep.
Typical order: launch --dry-run, probe-resources, check, launch, status (--watch), then collect,
report and analyze. Relaunching the same sweep file finishes whatever did not complete.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from deconcnn.analysis.sources import COMPARE_PREFIX, SWEEP_COLUMN
from deconcnn.backends import AUTO, STOP_GRACE_S
from deconcnn.backends.registry import backends, kinds
from deconcnn.runlog.errors import Interrupted, SweepError
from deconcnn.runlog.layout import ANALYSIS_DIR, COLLECTED_DIR, DEFAULT_OUT, REPORT_DIR
from deconcnn.sweep.limits import MAX_RUNS

if TYPE_CHECKING:
    from rich.console import Console

    from deconcnn.sweep.launch import LaunchResult
    from deconcnn.sweep.state import RunState

EXIT_USAGE = 2
WATCH_DEFAULT_S = 30.0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deconcnn")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors (a value that is not a number, an unknown option) in one line like
    every other refusal, instead of a usage block that buries the line saying what is wrong."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"deconcnn-sweep: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deconcnn-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"deconcnn-sweep {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    installed = kinds()  # --executor's choices (none is imported to list them)
    out_help = f"the folder results go in: the sweep's directory is OUT/<sweep name> (default {DEFAULT_OUT})"
    executor_help = (
        "where runs execute: slurm (job arrays), local (this machine), auto (slurm when a controller answers)"
    )
    sweep_dir_help = "the sweep's directory (OUT/<sweep name>), or a Hydra multirun directory"

    def sweep_file_command(name: str, help_: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_, description=help_)
        command.add_argument("sweep_file", type=Path, help="the sweep file (sweeps/*.yaml)")
        command.add_argument(
            "overrides",
            nargs="*",
            help="Hydra overrides for every run (key=value); hydra.launcher.* ones set the SLURM job",
        )
        command.add_argument("--executor", choices=(AUTO, *installed), default=AUTO, help=executor_help)
        command.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=out_help)
        command.add_argument(
            "--max-runs",
            type=int,
            default=MAX_RUNS,
            metavar="N",
            help=f"refuse a sweep file that expands to more runs (default {MAX_RUNS:,}; counted before listing them)",
        )
        command.add_argument(
            "--config-dir",
            type=Path,
            action="append",
            default=[],
            metavar="DIR",
            help="a config directory of your own (DIR/model/*.yaml, DIR/data/*.yaml, ...) searched beside "
            "the package's, for every run; repeatable",
        )
        return command

    launch = sweep_file_command("launch", "run or submit every run of a sweep that is not done yet")
    launch.add_argument(
        "--dry-run",
        action="store_true",
        help="compose and check every run's config, print the runs and the plan; submit nothing",
    )
    launch.add_argument("--json", action="store_true", help="with --dry-run: the runs as JSON")
    launch.add_argument(
        "--quiet",
        action="store_true",
        help="no progress display: a line per run that ends and the result (a local launch shows runs "
        "done/running/failed and an ETA; a SLURM launch its job arrays)",
    )
    launch.add_argument(
        "--smoke",
        action="store_true",
        help="the whole grid, each run shrunk to 4 steps on synthetic data (debug=smoke)",
    )
    launch.add_argument(
        "--workers-per-gpu", type=int, metavar="K", help="runs packed per GPU (default: the probe's choice)"
    )
    launch.add_argument("--only", metavar="PATTERN", help="only the runs whose id matches this glob, or this variant")
    launch.add_argument("--skip-check", action="store_true", help="submit to SLURM without a passing check (recorded)")
    launch.add_argument("--mps", action="store_true", help="run a CUDA MPS daemon in each packed task")
    launch.add_argument("--parallel", type=int, metavar="N", help="local without GPUs: runs at a time (default: K)")
    launch.add_argument(
        "--grace",
        type=float,
        default=STOP_GRACE_S,
        metavar="SECONDS",
        help=f"local: on Ctrl-C/SIGTERM, seconds a run gets to stop before SIGKILL (default {STOP_GRACE_S:g})",
    )

    status = sub.add_parser(
        "status",
        help="where a sweep stands: runs by state, problems with reasons, progress",
        description="where a sweep stands: runs by state, problems with reasons, progress",
    )
    status.add_argument("sweep_dir", type=Path, nargs="?", default=Path("."), help=sweep_dir_help)
    status.add_argument("--json", action="store_true", help="machine-readable; with --watch one JSON document per line")
    status.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=WATCH_DEFAULT_S,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {WATCH_DEFAULT_S:g}; never below the floor of the sweep's backend, "
        "higher for SLURM, whose every refresh asks squeue and sacct) until every run is final",
    )

    cancel = sub.add_parser(
        "cancel",
        help="stop a sweep's pending and running runs (a relaunch runs them again)",
        description="stop a sweep's pending and running runs (a relaunch runs them again)",
    )
    cancel.add_argument(
        "sweep_dir",
        type=Path,
        help="the sweep's directory (OUT/<sweep name>); not a Hydra multirun directory, whose runs "
        "deconcnn-sweep did not start and holds no job or process record of",
    )
    cancel.add_argument("--only", metavar="PATTERN", help="only the runs whose id matches this glob, or this variant")
    cancel.add_argument(
        "--grace",
        type=float,
        default=STOP_GRACE_S,
        metavar="SECONDS",
        help=f"seconds a run gets to stop after SIGTERM before SIGKILL (default {STOP_GRACE_S:g})",
    )

    probe = sweep_file_command("probe-resources", "measure how many runs of each variant to pack on one GPU")
    probe.add_argument(
        "--file", type=Path, help="write the result here instead of OUT/<sweep>/probe.json (plot beside it)"
    )
    probe.add_argument("--max-workers", type=int, default=8, help="largest number of runs per GPU tried (default 8)")
    probe.add_argument("--steps", type=int, default=50, help="timed optimizer steps per run (default 50)")
    probe.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    probe.add_argument("--only", metavar="VARIANT", help="probe only this variant")

    check = sweep_file_command("check", "the pre-launch checklist, verified on a short real run of each variant")
    check.add_argument("--workers-per-gpu", type=int, metavar="K", help="the packing decision, instead of a probe")

    def result_command(name: str, help_: str, out: str, tables: bool, several: bool = False) -> argparse.ArgumentParser:
        """A command that reads a sweep directory and writes into `<sweep dir>/<out>`; `several`: or
        several sweeps' directories, taken as one, writing into `compare-<A>+<B>/<out>` beside the first."""
        command = sub.add_parser(name, help=help_, description=help_)
        if several:
            command.add_argument(
                "sweep_dir",
                type=Path,
                nargs="*",
                default=[Path(".")],
                help=f"{sweep_dir_help}; several: taken as one, with a '{SWEEP_COLUMN}' column",
            )
            default = f"<sweep dir>/{out}; several sweeps: {COMPARE_PREFIX}<A>+<B>/{out} beside the first"
        else:
            command.add_argument("sweep_dir", type=Path, nargs="?", default=Path("."), help=sweep_dir_help)
            default = f"<sweep dir>/{out}"
        command.add_argument("--out", type=Path, help=f"the folder results go in (default {default})")
        if tables:
            command.add_argument(
                "--format", choices=("parquet", "csv"), default="parquet", help="table format (default parquet)"
            )
        return command

    result_command(
        "collect",
        "one table per record kind (train, val, curvature, noise, checkpoint) and one row per run, with "
        "the sweep's axes as columns; several sweeps: one table each across them, with a 'sweep' column",
        COLLECTED_DIR,
        tables=True,
        several=True,
    )
    report = result_command(
        "report",
        "the plots a researcher looks at first, with an index page; several sweeps: overlaid, one line style per sweep",
        REPORT_DIR,
        tables=False,
        several=True,
    )
    report.add_argument(
        "--heatmap",
        metavar="ROW,COL",
        help="the two axes of the heat maps (default: the two non-seed axes with the most values)",
    )

    analyze = result_command(
        "analyze",
        "fit every run's loss curve (knee, alpha_early, alpha_full) and compare "
        "runs across the sweep; tables, plots and a report section",
        ANALYSIS_DIR,
        tables=True,
    )
    analyze.add_argument("--workers", type=int, help="processes fitting runs (default: one per core)")
    analyze.add_argument(
        "--boot",
        type=int,
        default=20,
        metavar="N",
        help="wild-bootstrap refits per model for the fits table's *_boot_* columns (0: none; "
        "the run-level intervals are HAC whatever N)",
    )
    return parser


def _launch(args: argparse.Namespace) -> int:
    from deconcnn.backends.registry import resolve
    from deconcnn.sweep.grid import plan
    from deconcnn.sweep.launch import check_options, describe_plan, launch, refuse_changed
    from deconcnn.sweep.progress import local_progress

    started = time.perf_counter()
    check_options(args.workers_per_gpu, args.parallel, args.grace)
    if args.json and not args.dry_run:
        raise SweepError("--json goes with --dry-run")
    launch_plan = plan(
        args.sweep_file,
        out=args.out,
        smoke=args.smoke,
        only=args.only,
        overrides=args.overrides,
        config_dirs=args.config_dir,
        import_targets=True,
        relaunch=not args.dry_run,  # a relaunch validates only the runs it submits
        max_runs=args.max_runs,
    )

    def print_notes() -> None:  # only once the launch is accepted: a refusal is one line
        for note in launch_plan.notes:
            print(f"deconcnn-sweep: note: {note}", file=sys.stderr)

    if args.dry_run:
        refuse_changed(launch_plan.sweep, launch_plan.sweep_dir.read_manifest())  # as launch would
        # A plan for a backend named is made also where it is not available (a cluster elsewhere).
        backend_cls = resolve(args.executor, require_available=False)
        # Every backend's settings are checked even without its cluster: a typo must not wait for sbatch.
        sweep = launch_plan.sweep
        settings = {
            kind: cls.settings(sweep.runs[0].base, sweep.launcher_overrides) for kind, cls in backends().items()
        }
        backend_cls.check_feasible(settings[backend_cls.kind])
        print_notes()
        rows = launch_plan.dry_run_rows()
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        for row in rows:
            print(f"{row['run_id']:<40} {' '.join(row['overrides'])}")
        for line in describe_plan(launch_plan, backend_cls, args.workers_per_gpu, settings[backend_cls.kind]):
            print(line)
        print(
            f"{len(rows)} runs validated in {time.perf_counter() - started:.2f} s, "
            f"sweep directory {launch_plan.sweep_dir.path}; nothing submitted (--dry-run)"
        )
        return 0
    start = functools.partial(
        launch,
        launch_plan,
        executor=args.executor,
        workers_per_gpu=args.workers_per_gpu,
        skip_check=args.skip_check,
        mps=args.mps,
        cpu_slots=args.parallel,
        grace_s=args.grace,
    )
    if args.quiet:
        result = start(
            on_run_done=lambda run_id, state: print(f"{run_id}: {state}", flush=True),
            on_submitted=lambda result: print_notes(),
        )
        print_result(result, arrays=False, relaunch=args.command_line)
        return 0
    with local_progress() as progress:

        def submitted(result: LaunchResult) -> None:
            print_notes()
            if not result.detached:
                progress.submitted(result)

        result = start(on_run_done=progress.run_done, on_submitted=submitted, on_poll=progress.polled)
    print_result(result, relaunch=args.command_line)
    if not result.detached and result.submitted:
        print(progress.summary())
    return 0


def print_result(result: LaunchResult, arrays: bool = True, relaunch: str = "deconcnn-sweep launch ...") -> None:
    """What a launch did: runs submitted and skipped, SLURM's jobs (each array's layout), where the sweep is."""
    from deconcnn.sweep.progress import slurm_lines

    for note in result.notes:
        print(f"deconcnn-sweep: note: {note}", file=sys.stderr)
    skipped = ", ".join(f"{n} {state}" for state, n in sorted(result.skipped.items())) or "none"
    print(f"{result.executor}: {len(result.submitted)} runs submitted, skipped: {skipped}")
    if result.deferred:
        print(
            f"wave: {len(result.deferred)} more runs wait for room under the site's job limit ({result.limit}); "
            f"run the same launch again when jobs have ended to submit the next wave: {relaunch}"
        )
    if result.detached and result.submitted:
        if arrays:
            for line in slurm_lines(result):
                print(line)
        else:
            ids = ", ".join(sorted({j.split("_")[0] for j in result.job_ids}))
            print(f"{result.sbatch_calls} sbatch call(s), job arrays {ids}")
    print(f"sweep directory: {result.sweep_dir}  (deconcnn-sweep status {result.sweep_dir})")


def _cancel(args: argparse.Namespace) -> int:
    from deconcnn.sweep.cancel import cancel_sweep

    result = cancel_sweep(args.sweep_dir, only=args.only, grace_s=args.grace)
    untouched = ", ".join(f"{n} {state}" for state, n in sorted(result.untouched.items())) or "none"
    print(
        f"cancelled {len(result.cancelled)} runs ({len(result.stopped_here)} stopped on this machine, "
        f"{len(result.scancelled)} SLURM tasks scancel'ed); left as they are: {untouched}"
    )
    if result.cancelled:
        status = f"deconcnn-sweep status {result.sweep_dir}"
        print(f"relaunch to run them again: {result.relaunch_command()} (status: {status})")
    return 0


def watch_interval(requested: float, floor: float) -> float:
    """Seconds between refreshes of `status --watch`: as asked, but not below the backend's floor
    (each refresh of a SLURM sweep asks squeue and sacct, a load on the cluster's database:
    submitit #1759; a local sweep only reads files)."""
    return max(floor, requested)


def follow(
    sweep_dir: Path, states: list[RunState], interval: float, sleep: Callable[[float], object] = time.sleep
) -> Iterator[list[RunState]]:
    """The states `status --watch` shows, one list per refresh: the first, then a fresh one every
    `interval` seconds; the last one yielded is the one at which the watch ends (WatchEnd: every run
    final, no launch of the sweep live, and the same at the refresh before)."""
    from deconcnn.sweep.status import WatchEnd, current_states

    ended = WatchEnd(sweep_dir)
    while True:
        yield states
        if ended(states):
            return
        sleep(interval)
        states = current_states(sweep_dir)


def _status(args: argparse.Namespace) -> int:
    from deconcnn.sweep.status import current_states, json_text, render, status_json, watch_floor
    from deconcnn.sweep.sweepdir import SweepDir

    console: Console | None = None  # rich only for a table: its import is a tenth of a 50,000-run --json
    if not args.json:
        from rich.console import Console

        console = Console()

    def show(states: list[RunState]) -> None:
        if console is None:  # one document per line, so a watcher can read them as they come
            print(json_text(status_json(args.sweep_dir, states), one_line=args.watch is not None), flush=True)
        else:
            console.print(render(args.sweep_dir, states))

    if args.watch is not None and not (math.isfinite(args.watch) and args.watch > 0):
        raise SweepError(f"--watch must be a number of seconds > 0, got {args.watch:g}")
    journal = SweepDir(args.sweep_dir).journal_path
    if journal.exists():
        print(
            f"deconcnn-sweep: note: {journal}: a launch is submitting, or was killed while it did; the next "
            "launch of this sweep records what it queued",
            file=sys.stderr,
        )
    states = current_states(args.sweep_dir)
    if args.watch is None:
        show(states)
        return 0
    interval = watch_interval(args.watch, watch_floor(args.sweep_dir))
    if interval > args.watch:
        print(
            f"status: refreshing every {interval:g} s, not {args.watch:g} (each refresh of a SLURM sweep asks "
            "squeue and sacct)",
            file=sys.stderr,
        )
    if console is None or not console.is_terminal:  # a pipe or a file gets every refresh, one after another
        for refreshed in follow(args.sweep_dir, states, interval):
            show(refreshed)
    else:  # a terminal: one table, redrawn in place (all of it, also when taller than the screen)
        from rich.live import Live

        with Live(console=console, auto_refresh=False, vertical_overflow="visible") as live:
            for refreshed in follow(args.sweep_dir, states, interval):
                live.update(render(args.sweep_dir, refreshed), refresh=True)
    print("status: every run is final and no launch of the sweep is running", file=sys.stderr)
    return 0


def _collect(args: argparse.Namespace) -> int:
    from deconcnn.analysis.collect import collect
    from deconcnn.analysis.compare import collect_many

    progress = sys.stderr.isatty()
    if len(args.sweep_dir) > 1:
        print(collect_many(args.sweep_dir, fmt=args.format, out=args.out, progress=progress).summary())
    else:
        print(collect(args.sweep_dir[0], fmt=args.format, out=args.out, progress=progress).summary())
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from deconcnn.analysis.analyze import analyze

    if args.workers is not None and args.workers < 1:
        raise SweepError(f"--workers must be >= 1, got {args.workers}")
    if args.boot < 0:
        raise SweepError(f"--boot must be >= 0, got {args.boot}")
    result = analyze(
        args.sweep_dir, args.out, fmt=args.format, workers=args.workers, n_boot=args.boot, progress=sys.stderr.isatty()
    )
    print(result.summary())
    print(f"report: {result.sweep_dir / 'report' / 'index.html'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from deconcnn.analysis.report import report

    heatmap = args.heatmap.split(",") if args.heatmap else None
    out = report(args.sweep_dir, args.out, progress=sys.stderr.isatty(), heatmap=heatmap)
    print(f"report: {out / 'index.html'}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from rich.console import Console

    from deconcnn.sweep.probe.render import render_table
    from deconcnn.sweep.probe.rules import ProbeSettings
    from deconcnn.sweep.probe.runner import probe_resources

    settings = ProbeSettings(steps=args.steps, warmup=args.warmup, max_workers=args.max_workers)
    path, result = probe_resources(
        args.sweep_file,
        executor=args.executor,
        settings=settings,
        out=args.out,
        file=args.file,
        only=args.only,
        overrides=args.overrides,
        config_dirs=args.config_dir,
        max_runs=args.max_runs,
        report=lambda line: print(line, file=sys.stderr, flush=True),
    )
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

    from deconcnn.sweep.check.render import render, shrink_summary
    from deconcnn.sweep.check.runner import check_sweep

    console = Console(width=None if sys.stdout.isatty() else 160)
    result = check_sweep(
        args.sweep_file,
        out=args.out,
        overrides=args.overrides,
        config_dirs=args.config_dir,
        executor=args.executor,
        workers_per_gpu=args.workers_per_gpu,
        max_runs=args.max_runs,
        on_done=lambda c: print(
            f"check run {c.variant}: {c.outcome} after {c.seconds:.0f} s ({c.run_dir})", file=sys.stderr
        ),
    )
    console.print(render(result))
    for line in shrink_summary(result):
        print(line)
    for item, variant, change in result.changes():
        print(f"CHANGED {item} [{variant}]: {change} (deliberate: checked against the variant's own config)")
    for item, variant, detail in result.failures():
        print(f"FAILED {item} [{variant}]: {detail}")
    print(f"check {'passed' if result.passed else 'FAILED'} in {result.seconds:.0f} s: {result.path}")
    return 0 if result.passed else 1


COMMANDS = {
    "launch": _launch,
    "status": _status,
    "cancel": _cancel,
    "collect": _collect,
    "report": _report,
    "analyze": _analyze,
    "probe-resources": _probe,
    "check": _check,
}


def run(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # Hydra overrides may follow options (`launch SWEEP --out d trainer.max_epochs=2`), which
    # argparse's positional matching does not allow; take them from the unrecognised arguments.
    try:
        args, extra = parser.parse_known_args(argv)
        overrides = [e for e in extra if "=" in e and not e.startswith("-")]
        if len(overrides) != len(extra) or (overrides and not hasattr(args, "overrides")):
            unknown = " ".join(e for e in extra if e not in overrides) or " ".join(extra)
            parser.error(f"unrecognized arguments: {unknown}")
    except SystemExit as done:  # --help, --version, or a malformed command (its one line is printed)
        return 0 if done.code is None else done.code if isinstance(done.code, int) else EXIT_USAGE
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    args.command_line = shlex.join([parser.prog, *(sys.argv[1:] if argv is None else argv)])
    try:
        return COMMANDS[args.command](args)
    except SweepError as error:
        print(f"deconcnn-sweep: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as interrupt:
        return interrupt.exit_code
    except KeyboardInterrupt:
        return 130


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
