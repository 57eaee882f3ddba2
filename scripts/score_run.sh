#!/usr/bin/env bash
# Score a finished training run on every protocol the records under docs/quality/ use, and copy
# the results into a record folder:
#   moses-metrics.json        MOSES protocol, N prior samples at temperature 1, sampling seed 0
#   moses-metrics-seed1.json  the same with sampling seed 1 (through the `molvae` CLI)
#   quality.csv, quality.md, quality_validation.csv   the quality protocol at checkpoint STEP
#   likelihood.json           held-out NLL bound, k = 64, first 1,000 MOSES test molecules, with
#                             per_symbol from the bundled sample's test split (calibrate_anomaly.py,
#                             as the shipped models have it)
#
# usage: scripts/score_run.sh RUN_DIR STEP RECORD_DIR
#   N=30000 (samples per seed) and PYTHON=python may be set in the environment; it may be run
#   from any folder (RUN_DIR and RECORD_DIR are taken relative to the current one).
# ~13 min on 2 CPU cores with AMX for N=30000 and the reference statistics cached (measured
# 2026-12-07 on outputs/moses_bf16_160k, end to end). Each step is one of the documented
# commands, so a step that fails can be rerun by hand; the script stops at the first failure.
set -euo pipefail

if [ "$#" -ne 3 ]; then
  echo "usage: $0 RUN_DIR STEP RECORD_DIR" >&2
  exit 2
fi
run=$1
step=$2
rec=$3
n=${N:-30000}
py=${PYTHON:-python}
root=$(cd "$(dirname "$0")/.." && pwd)

if [ ! -f "$run/run.json" ]; then
  echo "error: $run is not a run folder (no run.json)" >&2
  exit 2
fi
mkdir -p "$rec"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== MOSES protocol, seed 0 ($n samples)"
"$py" "$root/experiments/sample.py" run_dir="$run" n="$n" seed=0
"$py" "$root/experiments/evaluate.py" run_dir="$run" reference=moses metrics=all
cp "$run/metrics.json" "$rec/moses-metrics.json"

echo "== MOSES protocol, seed 1 ($n samples)"
"$py" -m molvae.cli sample "$run" -n "$n" --seed 1 -o "$tmp/seed1.csv"
"$py" -m molvae.cli evaluate "$tmp/seed1.csv" --reference moses -o "$rec/moses-metrics-seed1.json"

echo "== quality protocol at step $step"
"$py" "$root/experiments/quality.py" "runs=[$run]" "steps=[$step]" n_jobs=1 out="$tmp/quality"
cp "$tmp/quality/quality.csv" "$tmp/quality/quality.md" "$rec/"
if [ -f "$tmp/quality/quality_validation.csv" ]; then
  cp "$tmp/quality/quality_validation.csv" "$rec/"
fi

echo "== held-out likelihood, k = 64"
"$py" -c "import sys; from molvae.evaluation.run import test_likelihood; \
print(test_likelihood(sys.argv[1], n=1000, k=64))" "$run"
"$py" "$root/scripts/calibrate_anomaly.py" "$run" "$root/molvae/assets/moses_sample/test.csv.gz" --n 1000
cp "$run/likelihood.json" "$rec/likelihood.json"

echo "== wrote $(ls "$rec" | tr '\n' ' ')to $rec"
