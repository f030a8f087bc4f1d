#!/usr/bin/env bash
# The six seed studies' `h200` profiles at once on one GPU machine, start to tables, under a hard deadline.
#
#   bash benchmarks/run_gpu_studies.sh            # from anywhere; works in the repository root
#
# One Ray head (16 CPUs, 1 GPU: every trial takes 1 CPU and 1/16 of the GPU, so 16 trials share the GPU), six
# `nas run STUDY --profile h200 --address ...` drivers in parallel, one SQLite database (runs/gpu_studies.db). At the
# deadline (DEADLINE_S seconds after the start, default 480) every driver still running gets SIGINT, then SIGKILL
# after a grace period; the platform keeps every finished trial and re-queues the rest, so running this script again
# resumes what is not done (finished studies return at once). Then every study's table (`nas show`), and, where $OUT
# is set (the device machine), a consistent copy of the database, the tables and the drivers' logs under $OUT.
# Exit status: 0 when every study is complete, 3 when the deadline stopped some (run again), 1 on a set-up error.
#
# Environment: DEADLINE_S, DB (sqlite file, default runs/gpu_studies.db), STUDIES (space-separated names), NUM_CPUS
# (default 16), PROFILE (default h200; "none" keeps the files' own settings), EXTRA_SETS (space-separated key=value
# overrides for every driver), MAX_CONCURRENT (the slots each driver may hold: one number for all, or space-separated
# STUDY=N pairs; default: none, first come first served, which starved the last drivers in session 5), REQUIRE_CUDA=0 and NUM_GPUS=0 (a CPU smoke test of this script). On the device machine
# `.devbundle/activate` (carried) makes Ray, Optuna and pydantic importable; it is sourced when present.
set -uo pipefail
T0=$(date +%s)
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ -f .devbundle/activate ] && ! "${PYTHON:-python3}" -c "import ray, optuna, pydantic" 2>/dev/null; then
  # shellcheck disable=SC1091
  source .devbundle/activate  # the device machine: its Python lacks what the platform needs
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0
export COLUMNS=${COLUMNS:-160}
PY=${PYTHON:-python3}
DEADLINE_S=${DEADLINE_S:-480}
GRACE_S=${GRACE_S:-45}
PROFILE=${PROFILE:-h200}
NUM_CPUS=${NUM_CPUS:-16}
DB=${DB:-runs/gpu_studies.db}
URL="sqlite:///$DB"
LOGS=runs/gpu_logs
RAY_TMP=/tmp/rgs  # short: Ray's socket paths must fit 107 bytes
PORT=${PORT:-6379}
read -r -a STUDIES <<< "${STUDIES:-cls_token_position vim_bidirectional mambaout_need_ssm globalmamba_band_order vmamba_scan_routes vil_classification_design}"
mkdir -p "$LOGS" runs
say() { printf '[%4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

"$PY" -c "import sys, torch, ray, optuna; assert torch.cuda.is_available() or sys.argv[1] == '0', 'no CUDA device'" \
  "${REQUIRE_CUDA:-1}" || { say "set-up error: torch with CUDA, ray and optuna must import (source .devbundle/activate?)"; exit 1; }
ARGS=()
[ "$PROFILE" != none ] && ARGS+=(--profile "$PROFILE")
for kv in ${EXTRA_SETS:-}; do ARGS+=(--set "$kv"); done

# ---- Ray head: a fresh one per call, in its own process group (stopped by that group, never `ray stop`) --------
PGID_FILE=runs/gpu_ray.pgid
if [ -f "$PGID_FILE" ]; then  # a head left by an earlier call that did not reach its end
  kill -TERM -- "-$(cat "$PGID_FILE")" 2>/dev/null && sleep 3
  kill -KILL -- "-$(cat "$PGID_FILE")" 2>/dev/null
  rm -f "$PGID_FILE"
fi
RAY_AUTH_TOKEN=$("$PY" -c "import secrets; print(secrets.token_hex(32))")
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
setsid bash -c 'echo $$ > "$0"; exec "$1" -m ray.scripts.scripts start --head --port="$2" --num-cpus="$3" \
  --num-gpus="$5" --include-dashboard=false --disable-usage-stats --temp-dir="$4" --node-ip-address=127.0.0.1' \
  "$PGID_FILE" "$PY" "$PORT" "$NUM_CPUS" "$RAY_TMP" "${NUM_GPUS:-1}" > "$LOGS/ray_head.log" 2>&1
RC=$?
if [ $RC -ne 0 ]; then say "ray start failed (exit $RC):"; tail -20 "$LOGS/ray_head.log"; exit 1; fi
ADDRESS=127.0.0.1:$PORT
say "Ray head at $ADDRESS ($NUM_CPUS CPUs, ${NUM_GPUS:-1} GPU), process group $(cat "$PGID_FILE")"

stop_ray() {
  if [ -f "$PGID_FILE" ]; then
    local g; g=$(cat "$PGID_FILE")
    kill -TERM -- "-$g" 2>/dev/null; sleep 3; kill -KILL -- "-$g" 2>/dev/null
    rm -f "$PGID_FILE"
  fi
}

# ---- the database's tables exist before six drivers open it at once ------------------------------------------
"$PY" -c "from nas.store import Store; Store('$URL').optuna_storage()" >> "$LOGS/db_init.log" 2>&1 ||
  say "database pre-init failed (see $LOGS/db_init.log); the drivers start one by one instead"

# ---- six drivers in parallel ----------------------------------------------------------------------------------
declare -A PID
slots_for() {  # the --max-concurrent of study $1 from MAX_CONCURRENT ("" when it sets none)
  local kv
  for kv in ${MAX_CONCURRENT:-}; do
    case $kv in
      "$1="*) echo "--max-concurrent ${kv#*=}"; return ;;
      *=*) ;;
      *) echo "--max-concurrent $kv"; return ;;
    esac
  done
}
for s in "${STUDIES[@]}"; do
  # shellcheck disable=SC2046
  "$PY" -m nas.cli run "studies/$s.yaml" "${ARGS[@]}" $(slots_for "$s") --address "$ADDRESS" --db "$URL" \
    --set storage.artifacts=runs/gpu_artifacts --set storage.ray_results=runs/gpu_ray_results \
    >> "$LOGS/$s.log" 2>&1 &
  PID[$s]=$!
  say "driver $s: pid ${PID[$s]}, log $LOGS/$s.log"
  sleep 2  # the drivers' first writes (study rows, Optuna studies) do not all land at once
done

alive() { local n=0; for s in "${STUDIES[@]}"; do kill -0 "${PID[$s]}" 2>/dev/null && n=$((n + 1)); done; echo $n; }
LAST=0
while [ "$(alive)" -gt 0 ] && [ $(( $(date +%s) - T0 )) -lt "$DEADLINE_S" ]; do
  sleep 5
  if [ $(( $(date +%s) - LAST )) -ge 60 ]; then
    LAST=$(date +%s)
    say "$(alive) driver(s) running"
    "$PY" -m nas.cli list --db "$URL" 2>/dev/null | sed 's/^/        /' 
  fi
done

STOPPED=0
if [ "$(alive)" -gt 0 ]; then
  STOPPED=1
  say "deadline ($DEADLINE_S s): SIGINT to the $(alive) driver(s) still running"
  for s in "${STUDIES[@]}"; do kill -INT "${PID[$s]}" 2>/dev/null; done
  END=$(( $(date +%s) + GRACE_S ))
  while [ "$(alive)" -gt 0 ] && [ "$(date +%s)" -lt "$END" ]; do sleep 2; done
  for s in "${STUDIES[@]}"; do kill -KILL "${PID[$s]}" 2>/dev/null && say "driver $s killed after the grace period"; done
fi
RCS=""
for s in "${STUDIES[@]}"; do wait "${PID[$s]}"; RCS+=" $s=$?"; done
say "drivers done:$RCS"
stop_ray

# ---- tables -------------------------------------------------------------------------------------------------
SUMMARY=$LOGS/tables.txt
{
  echo "# run_gpu_studies.sh, $(date -u +%FT%TZ), profile $PROFILE, deadline $DEADLINE_S s, wall $(( $(date +%s) - T0 )) s"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  git -C "$ROOT" rev-parse --short HEAD 2>/dev/null
  "$PY" -m nas.cli list --db "$URL"
  for s in "${STUDIES[@]}"; do echo; "$PY" -m nas.cli show "$s" --db "$URL"; done
} > "$SUMMARY" 2>&1
cat "$SUMMARY"

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  "$PY" -c "import sqlite3, sys; s = sqlite3.connect(sys.argv[1]); d = sqlite3.connect(sys.argv[2]); s.backup(d); d.close()" \
    "$DB" "$OUT/gpu_studies.db" && say "database copied to \$OUT/gpu_studies.db"
  cp "$SUMMARY" "$OUT/tables.txt"
  tar -czf "$OUT/gpu_logs.tar.gz" -C runs gpu_logs 2>/dev/null
fi
say "wall $(( $(date +%s) - T0 )) s"
if [ $STOPPED -eq 1 ]; then say "NOT DONE: the deadline stopped some studies; run this script again to resume"; exit 3; fi
exit 0
