#!/usr/bin/env bash
# Issue 14's study target: trials per hour of the shrunk cls_token gpu profile (5 readouts x 2 seeds = 10 trials of
# Vim blocks of width 192 and depth 12, 8,192 shapes at 64² x 3 epochs, 4 trials packed at 0.25 GPU, 2 CPUs each),
# this tree against the tree the issue measured (REV, default 8cac58c: 10 trials in 116 s then), same machine, same
# run, local Ray. The model specs are the same in both trees (same spec ids). Prints a table with the ratio.
#
#   bash benchmarks/bench_study_gpu.sh            # on a GPU machine with Ray, Optuna, pydantic (or .devbundle/)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REV=${REV:-8cac58c}
[ -f .devbundle/activate ] && ! python3 -c "import ray, optuna, pydantic" 2>/dev/null && source .devbundle/activate
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0 COLUMNS=160
BUNDLE_PATH=${PYTHONPATH:-}
WORK=$(mktemp -d /tmp/bench-study-gpu-XXXX)
git archive "$REV" | tar -x -C "$WORK" || { echo "cannot unpack $REV (a shallow copy?)"; exit 1; }
SETS=(--set 'factors={readout: [head, middle, tail, double, mean]}'
      --set 'fixed={route: bi, dims: [192], depths: [12], mixer.params.d_state: 16, tokenizer.params.patch_size: 8}'
      --set 'seeds=[0,1]'
      --set 'data={name: shapes, n_train: 8192, n_test: 5000, img_size: 64, knobs: {clutter: 0.3}}'
      --set 'train={epochs: 3, batch_size: 256, lr: 1.0e-3, weight_decay: 0.05, warmup_epochs: 0.5, device: cuda}'
      --set 'execution={cpus_per_trial: 2, gpus_per_trial: 0.25, gpu_memory_gb: 16, retries: 1}')
run() {  # $1 label, $2 tree, then the study and its arguments; prints "label driver_s wall_s"
  local label=$1 tree=$2; shift 2
  local t; t=$(date +%s)
  (cd "$tree" && PYTHONPATH=$tree${BUNDLE_PATH:+:$BUNDLE_PATH} python3 -m nas.cli run "$@" \
      --db "sqlite:///$WORK/$label.db" > "$WORK/$label.log" 2>&1)
  local s; s=$(grep -ao "finished, [0-9]* failed, in [0-9]* s" "$WORK/$label.log" | grep -o "in [0-9]*" | grep -o "[0-9]*")
  echo "$label ${s:-nan} $(( $(date +%s) - t ))"
}
NEW=$(run this "$ROOT" cls_token_position "${SETS[@]}")
OLD=$(run "$REV" "$WORK" studies/cls_token_position.yaml --profile gpu --set 'seeds=[0,1]' --set data.n_train=8192 \
      --set train.epochs=3)
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
echo "| tree | trials | driver's count, s | wall with Ray start-up and pre-flight, s | trials per hour | this / $REV |"
echo "|---|---|---|---|---|---|"
read -r _ no wo <<< "$OLD"; read -r _ nn wn <<< "$NEW"
python3 - "$no" "$wo" "$nn" "$wn" "$REV" <<'PY'
import sys
no, wo, nn, wn, rev = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
print(f"| {rev} (the issue's) | 10 | {no:.0f} | {wo:.0f} | {36000 / no:.0f} | (baseline) |")
print(f"| this tree | 10 | {nn:.0f} | {wn:.0f} | {36000 / nn:.0f} | {no / nn:.2f}x (wall {wo / wn:.2f}x) |")
PY
[ -n "${OUT:-}" ] && cp "$WORK"/*.log "$OUT/" 2>/dev/null
exit 0
