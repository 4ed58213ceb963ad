#!/usr/bin/env bash
# Every benchmark on this machine (quick settings), one markdown file: benchmarks/results/summary.md.
# On a GPU machine use benchmarks/gpu_check.sh instead.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
summary="$OUT/summary.md"
echo "# deconcnn benchmarks, $(date -u +%F) on $(nproc) CPU cores" >"$summary"

bench() {  # bench TITLE KEEP COMMAND...: keep the lines a benchmark prints that match KEEP
    local title=$1 keep=$2
    shift 2
    echo "running: $title" >&2
    { echo; echo "## $title"; echo; } >>"$summary"
    if "$@" >"$OUT/last.log" 2>&1; then
        grep -E "$keep" "$OUT/last.log" >>"$summary"
    else
        { echo "(failed; tail of its output:)"; tail -5 "$OUT/last.log"; } >>"$summary"
    fi
}

TABLES='^\|'
bench "orchestration (216 runs)" "$TABLES" "$PY" benchmarks/orchestration.py --sizes 216
bench "logging overhead (width 0.25, CPU)" "$TABLES" "$PY" benchmarks/logging_overhead.py --steps 24 --reps 3
bench "data pipeline (CPU)" "$TABLES" "$PY" benchmarks/data_pipeline.py --device cpu --quick
bench "curvature overhead (width 0.25, CPU)" "$TABLES" "$PY" benchmarks/curvature_overhead.py --widths 0.25 --quick
bench "trace interval coverage (ResNet-18 x0.125, one SGD run)" "$TABLES" "$PY" benchmarks/trace_coverage.py \
    --cache "$OUT/trace_coverage.json" --optimizers sgd --model-seeds 0 --steps 20 150 --records 6 --ref-probes 96
bench "collect, report and analyze at scale (36 runs)" '.' "$PY" benchmarks/collect_scale.py --runs 36 --report --analyze
rm -f "$OUT/last.log"
echo "wrote $summary" >&2
