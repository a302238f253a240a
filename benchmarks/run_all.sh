#!/usr/bin/env bash
# Run the four policy smoke scripts, each against a fresh worker and store that
# this script starts itself (free loopback ports, temporary directories, three
# tiny models, the settings the script needs), and chart each run.
# Writes <policy>.txt and <policy>.png into benchmarks/out/ (git-ignored); exits 1 if any
# script failed. SMOKE_OUT_DIR=benchmarks regenerates the committed charts.
#
# Environment: SMOKE_OUT_DIR (default benchmarks/out), SMOKE_TTL_SECONDS (default 5, as in
# the seed), PYTHON (default: the project's .venv, else `uv run python`).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT_DIR=${SMOKE_OUT_DIR:-$ROOT/benchmarks/out}
TTL=${SMOKE_TTL_SECONDS:-5}
if [[ -n "${PYTHON:-}" ]]; then
  PY=("$PYTHON")
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY=("$ROOT/.venv/bin/python")
else
  PY=(uv run python)
fi
mkdir -p "$OUT_DIR"

PIDS=()
WORK=""
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  PIDS=()
  [[ -n "$WORK" ]] && rm -rf "$WORK"
  WORK=""
}
trap cleanup EXIT

free_port() {
  "${PY[@]}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_healthy() {
  local url=$1 i
  for i in $(seq 1 300); do
    curl -sf --max-time 1 "$url/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "no answer from $url" >&2
  return 1
}

run_policy() {
  local policy=$1 script=$2 wport sport rc
  WORK=$(mktemp -d)
  "${PY[@]}" -m model_swap_cli.cli tiny-models "$WORK/models" --count 3 >/dev/null || return 1
  wport=$(free_port)
  sport=$(free_port)
  WORKER_HOST=127.0.0.1 WORKER_PORT=$wport MODEL_CACHE_DIR="$WORK/cache" LOG_LEVEL=WARNING \
    "${PY[@]}" -m inference_worker.cli >"$WORK/worker.log" 2>&1 &
  PIDS+=($!)
  STORE_HOST=127.0.0.1 STORE_PORT=$sport WORKER_URL="http://127.0.0.1:$wport" \
    MODELS_DIR="$WORK/models" CACHE_POLICY=$policy MAX_CACHE_SIZE=2 TTL_SECONDS=$TTL \
    LOG_LEVEL=WARNING "${PY[@]}" -m model_store_server.cli >"$WORK/store.log" 2>&1 &
  PIDS+=($!)
  wait_healthy "http://127.0.0.1:$wport" && wait_healthy "http://127.0.0.1:$sport" || return 1
  STORE_URL="http://127.0.0.1:$sport" PYTHON="${PY[0]}" "./$script" >"$OUT_DIR/$policy.txt" 2>&1
  rc=$?
  "${PY[@]}" benchmarks/plot_run.py "$OUT_DIR/$policy.txt" -o "$OUT_DIR/$policy.png" \
    --title "$policy (MAX_CACHE_SIZE=2, TTL_SECONDS=$TTL): time per step" >/dev/null || rc=1
  cleanup
  return $rc
}

failed=()
for pair in lru:test_cache_smoke.sh no-evict:test_no_evict_smoke.sh \
            ttl:test_ttl_smoke.sh lru-ttl:test_lru_ttl_smoke.sh; do
  policy=${pair%%:*}
  script=${pair#*:}
  if run_policy "$policy" "$script"; then
    echo "PASS  $policy  ($script)  -> $OUT_DIR/$policy.txt, $OUT_DIR/$policy.png"
  else
    echo "FAIL  $policy  ($script): $(tail -1 "$OUT_DIR/$policy.txt" 2>/dev/null)"
    failed+=("$policy")
  fi
done
if ((${#failed[@]})); then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all four smoke scripts passed"
