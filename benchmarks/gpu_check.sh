#!/usr/bin/env bash
# Every benchmark on a GPU machine with no network, in under 8 minutes; tables go to $OUT.
# Needs PyTorch there; the project's other wheels travel in .whl/ (see benchmarks/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=python3
start=$(date +%s)

SECTIONS=${SECTIONS:-data_pipeline logging_overhead curvature_overhead probe epoch_time}
PROBE_ARGS=${PROBE_ARGS:---max-workers 3 --steps 40}

section() {  # section NAME SECONDS KEEP COMMAND...: run with a time limit, keep the lines matching KEEP
    local name=$1 limit=$2 keep=$3
    shift 3
    [[ " $SECTIONS " == *" $name "* ]] || return 0
    echo "## $name ($(($(date +%s) - start)) s in)" | tee -a "$OUT/gpu_check.md"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    grep -E "$keep" "$OUT/$name.log" | tee -a "$OUT/gpu_check.md"
    [ $rc -eq 0 ] || { echo "($name exited $rc; tail of its log:)"; tail -5 "$OUT/$name.log"; } | tee -a "$OUT/gpu_check.md"
    echo | tee -a "$OUT/gpu_check.md"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/GPU: /' | tee "$OUT/gpu_check.md"
$PY -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu_check.md"

TABLES='^\|'
section data_pipeline 60 "$TABLES" $PY benchmarks/data_pipeline.py --device cuda
section logging_overhead 90 "$TABLES" $PY benchmarks/logging_overhead.py --device cuda --width 0.25 --steps 120
section curvature_overhead 120 "$TABLES" $PY benchmarks/curvature_overhead.py --device cuda
# The probe's own table is drawn with box characters: keep its per-variant lines instead.
section probe 170 'per GPU|k=[0-9]' $PY -m deconcnn.cli probe-resources sweeps/loss_lin_slope.yaml --executor local \
    $PROBE_ARGS --out "$OUT/probe_sweeps" --file "$OUT/probe.json" data=synthetic
section epoch_time 90 "$TABLES" $PY benchmarks/epoch_time.py --device cuda --probe "$OUT/probe.json"
echo "total $(($(date +%s) - start)) s" | tee -a "$OUT/gpu_check.md"
