"""What a launch prints while it runs: a local launch's progress, a SLURM launch's jobs.

A local launch waits for its runs: on a terminal a rich progress bar (runs done / total, running,
failed, ETA) with a line per run that ends above it; elsewhere (CI, a log file) the same facts as
one plain line per run that ends, since a redrawn bar is noise in a file. Both end with a summary.
The ETA is the end the pace so far predicts (wall time per run ended, whatever the parallelism,
times the runs), counting down between runs that end; a run's own ETA is in `status`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

if TYPE_CHECKING:
    from deconcnn.sweep.launch import LaunchResult

#: States a run that ended badly reads as (run.json's failed, or no final status at all).
GOOD_OUTCOMES = ("completed", "diverged")


def status_command(sweep_dir: Path) -> str:
    return f"deconcnn-sweep status {sweep_dir}"


def clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f} d"


class LocalProgress:
    """The progress of the runs a local launch waits for (module doc)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.outcomes: Counter[str] = Counter()
        self.total = 0
        self.running = 0
        self.started = time.monotonic()
        self.last_done_s = 0.0  # seconds from the start to the last run that ended
        self.sweep_dir: Path | None = None
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    # ---- the launch's callbacks

    def submitted(self, result: LaunchResult) -> None:
        self.total, self.sweep_dir, self.started = len(result.submitted), result.sweep_dir, time.monotonic()
        if not self.total:
            return
        slots = f", {result.slots} at a time" if result.slots else ""
        self._print(f"{self.total} runs start here{slots} (Ctrl-C stops them; a relaunch resumes them)")
        self._print(f"follow them from another terminal: {status_command(result.sweep_dir)}")
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("runs"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                console=self.console,
                transient=True,
            )
            self._task = self._bar.add_task("runs", total=self.total, counts=self.counts())
            self._bar.start()

    def polled(self, running: int) -> None:
        self.running = running
        self._refresh()

    def run_done(self, run_id: str, outcome: str) -> None:
        self.outcomes[outcome] += 1
        self.last_done_s = time.monotonic() - self.started
        done = sum(self.outcomes.values())
        line = f"[{done}/{self.total}] {run_id}: {outcome}"
        if self._bar is None:  # plain lines carry the counts the bar would show
            line += f"  ({self.counts()})"
        self._refresh()
        self._print(line)

    def _print(self, line: str) -> None:
        # soft_wrap: a line in a log file stays one line whatever its length
        self.console.print(line, highlight=False, markup=False, soft_wrap=not self.console.is_terminal)

    # ---- what is shown

    def failed(self) -> int:
        return sum(n for outcome, n in self.outcomes.items() if outcome not in GOOD_OUTCOMES)

    def eta_s(self) -> float | None:
        """Seconds to the end the pace so far predicts (counting down between runs that end)."""
        done = sum(self.outcomes.values())
        if not done or done >= self.total:
            return None
        return max(0.0, self.last_done_s / done * self.total - (time.monotonic() - self.started))

    def counts(self) -> str:
        text = f"running {self.running}, failed {self.failed()}"
        if sum(self.outcomes.values()) < self.total:
            eta = self.eta_s()
            text += f", ETA {clock(eta) if eta is not None else '-'}"
        return text

    def _refresh(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=sum(self.outcomes.values()), counts=self.counts(), refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def summary(self) -> str:
        """The last line: what the runs started here came to, in how long."""
        done = sum(self.outcomes.values())
        counts = ", ".join(f"{n} {outcome}" for outcome, n in self.outcomes.most_common()) or "none ended"
        return f"{done}/{self.total} runs ended in {clock(time.monotonic() - self.started)}: {counts}"


@contextmanager
def local_progress(stream: TextIO | None = None) -> Iterator[LocalProgress]:
    """A LocalProgress on `stream` (stdout), its bar taken down however the launch ends."""
    progress = LocalProgress(Console(file=stream, highlight=False))
    try:
        yield progress
    finally:
        progress.close()


def slurm_lines(result: LaunchResult) -> list[str]:
    """A SLURM launch's job arrays: for each, its id, its tasks and the runs each task holds."""
    arrays: dict[str, list[str]] = {}  # job id -> its tasks' handles (`<job>_<task>`, or `<job>`)
    for handle in result.job_ids:
        arrays.setdefault(handle.partition("_")[0], []).append(handle)
    lines = [f"{result.sbatch_calls} sbatch call(s), {len(arrays)} job array(s), {len(result.job_ids)} tasks:"]
    runs_of = {handle.id: runs for handle, runs in result.packs.items()}
    for array, handles in arrays.items():
        runs = [runs_of.get(handle, []) for handle in handles]
        per_task = sorted({len(r) for r in runs})
        first, last = runs[0][0] if runs[0] else "?", runs[-1][-1] if runs[-1] else "?"
        indices = sorted(int(h.partition("_")[2]) for h in handles if h.partition("_")[2].isdigit())
        # submitit submits a batch of one pack as a plain job: no array, no task index
        span = f"array tasks {indices[0]}-{indices[-1]}" if indices else "one job, no array"
        lines.append(
            f"  job {array}: {span}, {sum(len(r) for r in runs)} runs "
            f"({'/'.join(map(str, per_task))} per task), {first} .. {last}"
        )
    lines.append(f"follow it: {status_command(result.sweep_dir)} --watch")
    return lines
