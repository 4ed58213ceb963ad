"""The probe's result for a person: a table of every measurement and a plot of throughput and memory
against k."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deconcnn.sweep.probe.rules import MEMORY_FRACTION


def plot_probe(result: dict[str, Any], path: Path) -> Path:
    """Aggregate samples/s against k per variant (chosen k circled, OOM/failure crossed) and
    memory against k as a share of its limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (variant, entry) in enumerate(result["variants"].items()):
        color = f"C{i}"
        ok = [m for m in entry["measurements"] if m["status"] == "ok"]
        ax_tp.plot([m["k"] for m in ok], [m["aggregate_samples_per_s"] for m in ok], "o-", color=color, label=variant)
        mem = [m for m in ok if m.get("memory_limit_mb")]
        ax_mem.plot(
            [m["k"] for m in mem],
            [100 * m["memory_total_mb"] / m["memory_limit_mb"] for m in mem],
            "o-",
            color=color,
            label=variant,
        )
        for m in entry["measurements"]:
            if m["status"] != "ok":
                ax_tp.plot([m["k"]], [0], "x", color=color, markersize=10, mew=2)
                ax_tp.annotate(
                    m["status"].upper(), (m["k"], 0), textcoords="offset points", xytext=(4, 6), color=color, fontsize=8
                )
        chosen = entry["choice"]["k"]
        hit = [m for m in ok if m["k"] == chosen]
        if entry["choice"].get("ok") and hit:
            ax_tp.plot(
                [chosen], [hit[0]["aggregate_samples_per_s"]], "o", markersize=14, mfc="none", color=color, mew=2
            )
    settings = result.get("settings", {})
    ax_mem.axhline(100 * settings.get("memory_fraction", MEMORY_FRACTION), color="grey", ls="--", label="limit")
    device = result.get("device", {})
    ax_tp.set(
        xlabel="concurrent runs k",
        ylabel="aggregate samples/s",
        title=f"throughput on {device.get('name') or device.get('kind')} (circle: chosen k)",
    )
    ax_mem.set(xlabel="concurrent runs k", ylabel="% of limit", title="memory of all k runs (GPU: device; CPU: RAM)")
    for ax in (ax_tp, ax_mem):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_tp.set_ylim(bottom=0)
    ax_mem.set_ylim(bottom=0)
    fig.suptitle(
        f"probe of sweep {result.get('sweep')}: {settings.get('steps')} timed steps after "
        f"{settings.get('warmup')} warm-up, {device.get('cpus')} CPUs",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_table(result: dict[str, Any]) -> Any:
    """A rich table of every measurement, the chosen k marked."""
    from rich.table import Table

    device = result.get("device", {})
    table = Table(title=f"probe on {device.get('name')} ({device.get('kind')}, {device.get('cpus')} CPUs)")
    for column in (
        "variant",
        "k",
        "status",
        "aggregate samples/s",
        "per run samples/s",
        "memory/process MB",
        "all k MB",
        "limit MB",
        "CPU/process",
    ):
        table.add_column(column, justify="right" if column not in ("variant", "status") else "left")
    for variant, entry in result["variants"].items():
        for m in entry["measurements"]:
            mark = " *" if m["k"] == entry["choice"]["k"] and entry["choice"].get("ok") else ""
            if m["status"] == "ok":
                cpu = sum(m["cpu_util"]) / len(m["cpu_util"])
                table.add_row(
                    variant,
                    f"{m['k']}{mark}",
                    "ok",
                    f"{m['aggregate_samples_per_s']:.1f}",
                    f"{m['mean_per_run_samples_per_s']:.1f}",
                    f"{m['memory_per_process_mb']:.0f}",
                    f"{m['memory_total_mb']:.0f}",
                    f"{m['memory_limit_mb'] or 0:.0f}",
                    f"{cpu:.0%}",
                )
            else:
                table.add_row(variant, str(m["k"]), m["status"], "", "", "", "", "", "")
    return table
