#!/usr/bin/env bash
# Shared by the four policy smoke scripts (test_*_smoke.sh at the repo root):
# checking that the store runs the policy a script needs, resetting it, running
# labelled steps with curl, and the final verdict. Source it; do not run it.

export LC_ALL=C
STORE_URL=${STORE_URL:-http://localhost:8000}
MODEL_A=${MODEL_A:-tiny-a.gguf}
MODEL_B=${MODEL_B:-tiny-b.gguf}
MODEL_C=${MODEL_C:-tiny-c.gguf}
PROMPT=${PROMPT:-Once upon a time}
MAX_TOKENS=${MAX_TOKENS:-16}
PYTHON=${PYTHON:-python3}
# Bearer tokens, when the store runs with API_KEYS / the worker with WORKER_TOKEN.
STORE_AUTH=()
[[ -n "${API_KEY:-}" ]] && STORE_AUTH=(-H "Authorization: Bearer $API_KEY")
WORKER_AUTH=()
[[ -n "${WORKER_TOKEN:-}" ]] && WORKER_AUTH=(-H "Authorization: Bearer $WORKER_TOKEN")

STEP_COUNT=0
FIRST_FAILURE=""
SMOKE_TMP=$(mktemp -d)
trap 'rm -rf "$SMOKE_TMP"' EXIT

# json_field JSON DOTTED.PATH -> prints the value (lists joined by commas, null as empty)
json_field() {
  "$PYTHON" - "$1" "$2" <<'PY'
import json, sys
value = json.loads(sys.argv[1])
for key in sys.argv[2].split("."):
    value = value[int(key)] if isinstance(value, list) else value[key]
if isinstance(value, list):
    print(",".join(v["name"] if isinstance(v, dict) else str(v) for v in value))
elif value is None:
    print("")
else:
    print(value)
PY
}

# require_store POLICY MAX_CACHE_SIZE(or "-") START_COMMAND
# Exits 2 with the command that starts the right store when the store differs.
require_store() {
  local want_policy=$1 want_size=$2 start_cmd=$3 status policy size available model need
  need="CACHE_POLICY=$want_policy"
  [[ "$want_size" != "-" ]] && need+=" MAX_CACHE_SIZE=$want_size"
  if ! status=$(curl -sf --max-time 10 "${STORE_AUTH[@]}" "$STORE_URL/status"); then
    echo "No model store answers at $STORE_URL. Start one with:" >&2
    echo "  $start_cmd" >&2
    exit 2
  fi
  policy=$(json_field "$status" policy)
  size=$(json_field "$status" max_cache_size)
  if [[ "$policy" != "$want_policy" || ( "$want_size" != "-" && "$size" != "$want_size" ) ]]; then
    echo "This script needs $need, but the store at $STORE_URL runs CACHE_POLICY=$policy MAX_CACHE_SIZE=$size." >&2
    echo "Stop it and start the right store with:" >&2
    echo "  $start_cmd" >&2
    exit 2
  fi
  available=",$(json_field "$status" available),"
  for model in "$MODEL_A" "$MODEL_B" "$MODEL_C"; do
    if [[ "$available" != *",$model,"* ]]; then
      echo "The store has no model $model (it has: ${available:1:-1})." >&2
      echo "Write the tiny test models with: uv run model-swap tiny-models <MODELS_DIR>, or set MODEL_A/MODEL_B/MODEL_C." >&2
      exit 2
    fi
  done
  WORKER_URL=${WORKER_URL:-$(json_field "$status" worker_url)}
  TTL_SECONDS=$(json_field "$status" ttl_seconds)
}

# reset_store: start from an empty worker cache (evicts through the store's normal path).
reset_store() {
  if ! curl -sf --max-time 120 "${STORE_AUTH[@]}" -X POST "$STORE_URL/reset" >/dev/null; then
    echo "POST $STORE_URL/reset failed" >&2
    exit 1
  fi
  echo "(store reset: worker cache empty)"
}

# worker_bytes_received: body bytes the worker has read since it started.
worker_bytes_received() {
  json_field "$(curl -sf --max-time 10 "${WORKER_AUTH[@]}" "$WORKER_URL/status")" received.bytes
}

fail_step() {
  echo "!!! step $1 differs: $2"
  [[ -z "$FIRST_FAILURE" ]] && FIRST_FAILURE="step $1 differs: $2"
}

# step LABEL MODEL EXPECT_STATUS EXPECT_ACTION [EXPECT_EVICTED (comma-separated)]
step() {
  local label=$1 model=$2 want_status=$3 want_action=$4 want_evicted=${5:-}
  STEP_COUNT=$((STEP_COUNT + 1))
  local n=$STEP_COUNT headers="$SMOKE_TMP/headers" metrics="$SMOKE_TMP/metrics"
  echo
  echo "=== $n. $label -> expect: $want_action${want_evicted:+ (evicting $want_evicted)} ==="
  curl -sN --max-time 300 -D "$headers" "${STORE_AUTH[@]}" \
    -w '%{stderr}%{http_code} %{time_connect} %{time_starttransfer} %{time_total} %{speed_download}' \
    -H 'Content-Type: application/json' \
    -d "{\"prompt\": \"$PROMPT\", \"model\": \"$model\", \"max_tokens\": $MAX_TOKENS}" \
    "$STORE_URL/user_request" 2>"$metrics"
  echo
  local code connect ttfb total speed action evicted
  read -r code connect ttfb total speed <"$metrics"
  awk -v code="$code" -v connect="$connect" -v ttfb="$ttfb" -v total="$total" -v speed="$speed" \
    'BEGIN { printf "[http %s | tcp_connect=%.3fs  time_to_first_byte=%.3fs  generation=%.3fs  total=%.3fs | throughput=~%.0f bytes/s]\n", code, connect, ttfb, total - ttfb, total, speed }'
  action=$(grep -i '^x-cache-action:' "$headers" | tail -1 | cut -d: -f2- | tr -d ' \r')
  evicted=$(grep -i '^x-evicted:' "$headers" | tail -1 | cut -d: -f2- | tr -d ' \r')
  echo "actual: action=${action:-none} evicted=[$evicted]"
  if [[ "$code" != "$want_status" ]]; then
    fail_step "$n ($label)" "expected HTTP $want_status, got $code"
  elif [[ "$action" != "$want_action" ]]; then
    fail_step "$n ($label)" "expected action $want_action, got ${action:-none}"
  elif [[ "$evicted" != "$want_evicted" ]]; then
    fail_step "$n ($label)" "expected evicted [$want_evicted], got [$evicted]"
  fi
}

# check LABEL ACTUAL EXPECTED: an extra assertion, reported (and failed) like a step.
check() {
  echo "--- check: $1: expected $3, got $2"
  if [[ "$2" != "$3" ]]; then
    fail_step "$STEP_COUNT ($1)" "expected $3, got $2"
  fi
}

finish() {
  echo
  if [[ -n "$FIRST_FAILURE" ]]; then
    echo "FAIL: $FIRST_FAILURE"
    exit 1
  fi
  echo "PASS: all $STEP_COUNT steps matched"
  exit 0
}
