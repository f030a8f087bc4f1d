#!/usr/bin/env bash
# Issue 14's study target: trials per hour of the shrunk cls_token gpu profile (5 readouts x 2 seeds = 10 trials of
# Vim blocks of width 192 and depth 12, 8,192 shapes at 64² x 3 epochs, 4 trials packed at 0.25 GPU, 2 CPUs each),
# this tree against the tree the issue measured (REV, default 8cac58c: 10 trials in 116 s then), same machine, same
# run, local Ray. The model specs are the same in both trees (same spec ids). Prints a table with the ratio of the
# whole command's wall time (the driver's count, `nas run`'s "in N s", beside it: since session 17 Ray starts before
# that count begins, beside the CPU pre-flight, so only the wall compares like with like).
#
#   bash benchmarks/bench_study_gpu.sh            # on a GPU machine with Ray, Optuna, pydantic (or .devbundle/)
#   WARM=1 bash benchmarks/bench_study_gpu.sh     # then each tree again, its Triton kernels already compiled
#   MPS=1 bash benchmarks/bench_study_gpu.sh      # then this tree twice more, kernels cached: without and with
#                                                 # execution.cuda_mps: true (nas/mps.py), against the same baseline
#   NOWARM=1 bash benchmarks/bench_study_gpu.sh   # then this tree once more with execution.warm_kernels: false
#                                                 # (no kernel warm-up, nas/warmup.py), its kernels cached by then
#   SKIP_OLD=1 ...                                # no baseline run: this tree's rows only, without ratios
#   CLEAN=1 ...                                   # stop Ray / study processes an earlier (killed) run left behind
#   PHASES=1 ...                                  # this tree's runs through benchmarks/study_phases.py: "[phase]"
#                                                 # lines (start-up, pre-flight, Ray, rounds, shutdown) in its log
#
# Every log line carries the seconds since its command started, and each run ends with "[exit] +N s": where the wall
# time between the driver's count and the command's goes.
# Before the runs, the Python bytecode of the device bundle and of both trees is compiled (see NOPYC below).
# Both trees start from the machine's Triton cache as it is (cold on a fresh machine: the first wave of packed trials
# compiles every kernel). With WARM=1 each tree runs a second time after both cold runs, so its kernels load from the
# cache, as they do for a user's second study on the same machine; both ratios are printed. After each run the
# study's timeline (benchmarks/study_timeline.py) says where its seconds went.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REV=${REV:-8cac58c}
[ -f .devbundle/activate ] && ! python3 -c "import ray, optuna, pydantic" 2>/dev/null && source .devbundle/activate
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0 COLUMNS=160
BUNDLE_PATH=${PYTHONPATH:-}
WORK=$(mktemp -d /tmp/bench-study-gpu-XXXX)
git archive "$REV" | tar -x -C "$WORK" || { echo "cannot unpack $REV (a shallow copy?)"; exit 1; }
# Bytecode, as a pip install leaves it: the GPU machine sets PYTHONDONTWRITEBYTECODE=1 and the device bundle is
# installed with --no-compile, so without this every process (the driver, Ray's, each worker, the warm-up) compiles
# Ray, Optuna, SQLAlchemy, pydantic and both trees from source (session 14: a worker's imports took ~19 s there).
# compileall writes .pyc whatever that variable says; both trees get it, so the comparison stays fair. NOPYC=1: skip.
if [ -z "${NOPYC:-}" ]; then
  t=$(date +%s)
  dirs=("$ROOT/blocks" "$ROOT/kernels" "$ROOT/nas" "$WORK/blocks" "$WORK/kernels" "$WORK/nas")
  for d in ${BUNDLE_PATH//:/ }; do [ -d "$d" ] && [ "$d" != "$ROOT" ] && dirs+=("$d"); done  # the bundle, not the tree
  # torch, triton and numpy too, where the install left them without bytecode and lets us write it (what `nas run`'s
  # own hint asks a user to do once; session 17's GPU machine had none: every process compiled them)
  for m in torch triton numpy; do
    d=$(python3 -c "import importlib.util as u, os; s = u.find_spec('$m'); print(os.path.dirname(s.origin) if s else '')")
    [ -n "$d" ] && [ -w "$d" ] && dirs+=("$d")
    [ -n "$d" ] && [ ! -w "$d" ] && echo "$m at $d is read-only: its bytecode stays as installed"
  done
  python3 -m compileall -q -j 0 "${dirs[@]}" > /dev/null 2>&1
  echo "bytecode compiled in $(( $(date +%s) - t )) s (NOPYC=1 skips it)"
fi
# Both trees start with torch's files in the page cache: this tree runs first, and on a fresh machine its driver's
# `import torch` read them from disk (3.5 s in session 18's call V, ~1.6 s once cached) while the baseline's did not.
python3 -c "import torch, triton" 2>/dev/null
SETS=(--set 'factors={readout: [head, middle, tail, double, mean]}'
      --set 'fixed={route: bi, dims: [192], depths: [12], mixer.params.d_state: 16, tokenizer.params.patch_size: 8}'
      --set 'seeds=[0,1]'
      --set 'data={name: shapes, n_train: 8192, n_test: 5000, img_size: 64, knobs: {clutter: 0.3}}'
      --set 'train={epochs: 3, batch_size: 256, lr: 1.0e-3, weight_decay: 0.05, warmup_epochs: 0.5, device: cuda}'
      --set 'execution={cpus_per_trial: 2, gpus_per_trial: 0.25, gpu_memory_gb: 16, retries: 1}')
leftovers() {  # a study killed mid-run (this script under `timeout`) can leave its Ray, workers and warm-up running,
  # sharing the GPU with the next run (session 17's second call): say so before each run; CLEAN=1 stops them (every
  # Ray and study process on the machine: for a dedicated benchmark machine only)
  local pids; pids=$(pgrep -f "nas.cli run|nas.warmup|gcs_server|raylet|ray::" || true)
  [ -z "$pids" ] && return
  if [ -n "${CLEAN:-}" ]; then
    echo "CLEAN=1: stopping $(echo "$pids" | wc -w) Ray / study process(es) left from an earlier run" >&2
    kill $pids 2>/dev/null; sleep 3; kill -9 $pids 2>/dev/null
  else
    echo "warning: $(echo "$pids" | wc -w) Ray / study process(es) already running: the timings may be off (CLEAN=1" \
         "stops them)" >&2
  fi
}
stamp() {  # prefix each line with the seconds since $1 (an epoch time)
  python3 -uc 'import sys, time
t0 = float(sys.argv[1])
for line in sys.stdin:
    sys.stdout.write(f"{time.time() - t0:7.2f} {line}")' "$1"
}
run() {  # $1 label, $2 tree, then the study and its arguments; prints "label driver_s wall_s"
  local label=$1 tree=$2; shift 2
  leftovers
  local t; t=$(date +%s)
  local t0; t0=$(date +%s.%N)
  local entry=(-m nas.cli)
  [ -n "${PHASES:-}" ] && [ "$tree" = "$ROOT" ] && entry=("$ROOT/benchmarks/study_phases.py")
  (cd "$tree" && PYTHONPATH=$tree${BUNDLE_PATH:+:$BUNDLE_PATH} python3 "${entry[@]}" run "$@" \
      --db "sqlite:///$WORK/$label.db" 2>&1 | stamp "$t0" > "$WORK/$label.log")
  echo "[exit] +$(python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.2f}')" "$t0") s" \
      >> "$WORK/$label.log"
  local warm="$tree/runs/ray/kernel_warmup-cls_token_position.log"  # the kernel warm-up's lines, and when it ended
  if [ -f "$warm" ] && [ "$(stat -c %Y "$warm")" -ge "${t0%.*}" ]; then
    sed 's/^/[warm-up] /' "$warm" >> "$WORK/$label.log"
    echo "[warm-up] its log last written at +$(( $(stat -c %Y "$warm") - ${t0%.*} )) s" >> "$WORK/$label.log"
  fi
  local s; s=$(grep -ao "finished, [0-9]* failed, in [0-9]* s" "$WORK/$label.log" | grep -o "in [0-9]*" | grep -o "[0-9]*")
  echo "$label ${s:-nan} $(( $(date +%s) - t ))"
  python3 "$ROOT/benchmarks/study_timeline.py" "$WORK/$label.db" > "$WORK/$label.timeline.md" 2>&1
}
run_new() { local label=$1; shift; run "$label" "$ROOT" cls_token_position "${SETS[@]}" "$@"; }
run_old() { run "$1" "$WORK" studies/cls_token_position.yaml --profile gpu --set 'seeds=[0,1]' --set data.n_train=8192 \
      --set train.epochs=3; }
table() {  # $1 what the rows are, $2 old "label driver wall", $3 new
  local no wo nn wn
  read -r _ no wo <<< "$2"; read -r _ nn wn <<< "$3"
  python3 - "$no" "$wo" "$nn" "$wn" "$REV" "$1" <<'PY'
import sys
no, wo, nn, wn, rev, what = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), *sys.argv[5:]
print(f"| {rev} (the issue's), {what} | 10 | {no:.0f} | {wo:.0f} | {36000 / wo:.0f} | (baseline) |")
print(f"| this tree, {what} | 10 | {nn:.0f} | {wn:.0f} | {36000 / wn:.0f} | {wo / wn:.2f}x (driver's count "
      f"{no / nn:.2f}x) |")
PY
}
NEW=$(run_new this)
if [ -n "${SKIP_OLD:-}" ]; then OLD="$REV nan nan"; else OLD=$(run_old "$REV"); fi
if [ -n "${WARM:-}" ]; then NEW_W=$(run_new this-warm); OLD_W=$(run_old "$REV-warm"); fi
if [ -n "${MPS:-}" ]; then
  NEW_C=$(run_new this-cached); NEW_M=$(run_new this-mps --set execution.cuda_mps=true)
fi
if [ -n "${NOWARM:-}" ]; then
  NEW_NW=$(run_new this-cached-nowarmup --set execution.warm_kernels=false)
fi
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
echo "| tree | trials | driver's count, s | wall with Ray start-up and pre-flight, s | trials per hour (wall) |" \
     "this / $REV (wall) |"
echo "|---|---|---|---|---|---|"
table "Triton cache as found" "$OLD" "$NEW"
[ -n "${WARM:-}" ] && table "kernels cached" "$OLD_W" "$NEW_W"
if [ -n "${MPS:-}" ]; then
  table "kernels cached, MPS off" "$OLD" "$NEW_C" | tail -1
  table "kernels cached, CUDA MPS on" "$OLD" "$NEW_M" | tail -1
  read -r _ off _ <<< "$NEW_C"; read -r _ on _ <<< "$NEW_M"
  python3 -c "import sys; print(f'MPS on / off (driver): {float(sys.argv[1]) / float(sys.argv[2]):.2f}x')" "$off" "$on"
fi
if [ -n "${NOWARM:-}" ]; then
  table "kernels cached, warm-up off" "$OLD" "$NEW_NW" | tail -1
fi
for f in "$WORK"/*.timeline.md; do echo; echo "timeline of $(basename "$f" .timeline.md):"; cat "$f"; done
for f in "$WORK"/*.log; do  # where each command's wall went (seconds since it started)
  echo; echo "start-up and shutdown of $(basename "$f" .log):"
  grep -a "\[phase\]\|\[exit\]\|\[warm-up\]\|Ray started\|first trial\|finished, \|trial(s) already done" "$f" \
    | cut -c1-140
done
[ -n "${OUT:-}" ] && cp "$WORK"/*.log "$WORK"/*.db "$WORK"/*.timeline.md "$OUT/" 2>/dev/null
exit 0
