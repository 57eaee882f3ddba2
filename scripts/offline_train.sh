#!/bin/bash
# Train experiment=moses_gpu on a machine with no network (a GPU node), from a bundle made by
# scripts/offline_bundle.py, under a wall-clock deadline, and pack the run folder for the trip back.
#   bash scripts/offline_train.sh            # in the checkout's root, the bundle in ./bundle
# Environment: PY (python3), BUNDLE (bundle), OUT (folder for the packed run, /tmp/out),
# DEADLINE (seconds from start by which training must end, 545: sized for a 10-minute slot),
# BUDGET (train.time_budget_s; default: what the deadline leaves), RUN (/tmp/run), EXTRA (more
# Hydra overrides). The run is planned to fit (train.time_budget_s with the wsd schedule's
# shares: 20% cool-down under the grammar mask) and comes back as $OUT/run.tgz.part_* (15 MB
# pieces): cat $OUT/run.tgz.part_* | tar xzf - -C outputs/NAME.
set -u
export PYTHONUNBUFFERED=1
T0=$(date +%s); say(){ echo "[$(( $(date +%s) - T0 ))s] $*"; }
PY=${PY:-python3}; BUNDLE=${BUNDLE:-bundle}; OUT=${OUT:-/tmp/out}; RUN=${RUN:-/tmp/run}
EXTRA=${EXTRA:-}; DEADLINE=${DEADLINE:-545}; mkdir -p "$OUT"
(nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv || true) 2>&1
xz -dc "$BUNDLE/moses_train_test.npz.xz" > /tmp/moses_train_test.npz & XZ=$!
if [ -d "$BUNDLE/wheels" ] && [ -z "${SKIP_WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$BUNDLE"/wheels/*.whl || exit 3
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
$PY -c "import jax, flax, optax, orbax.checkpoint as o, rdkit; print('versions: jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, 'rdkit', rdkit.__version__, jax.devices())"
if ! timeout 150 $PY scripts/offline_check.py > "$OUT/check.log" 2>&1; then
  tail -25 "$OUT/check.log"
  [ -d "$BUNDLE/fallback" ] || exit 4
  say "pre-flight failed with this machine's flax/optax/orbax: trying the bundle's"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site2 "$BUNDLE"/fallback/*.whl || exit 4
  export PYTHONPATH=/tmp/site2:$PYTHONPATH
  timeout 150 $PY scripts/offline_check.py > "$OUT/check2.log" 2>&1 || { tail -25 "$OUT/check2.log"; exit 5; }
fi
say "pre-flight: $(grep -h 'CHECK OK' "$OUT"/check*.log | tail -1)"
wait $XZ || exit 6
NOW=$(( $(date +%s) - T0 )); BUDGET=${BUDGET:-$(( DEADLINE - NOW - 80 ))}
say "training with train.time_budget_s=$BUDGET"
# steps/lr_decay_steps/grammar_from_step: an upper bound the plan cuts, keeping 20% shares
timeout -s INT $(( DEADLINE - NOW )) $PY experiments/train.py experiment=moses_gpu \
  data.preprocessed=/tmp/moses_train_test.npz train.time_budget_s="$BUDGET" \
  train.steps=100000 train.lr_decay_steps=20000 train.grammar_from_step=80000 \
  train.progress=false hydra.run.dir="$RUN" $EXTRA > "$OUT/train.log" 2>&1
say "train exit $?"
grep -v "absl\|orbax\|tensorstore" "$OUT/train.log" | tail -30
cd "$RUN" || exit 7
last=$(ls checkpoints | grep -E '^[0-9]+$' | sort -n | tail -1)
say "latest checkpoint $last"
rm -f /tmp/run.tar /tmp/run.tar.gz
tar cf /tmp/run.tar --exclude=./checkpoints . && tar rf /tmp/run.tar "checkpoints/$last" \
  && gzip -1 /tmp/run.tar && split -b 15m /tmp/run.tar.gz "$OUT/run.tgz.part_"
ls -la "$OUT"; say done
