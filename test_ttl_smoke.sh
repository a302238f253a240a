#!/usr/bin/env bash
# Smoke test of the ttl policy (TTL_SECONDS=5 by default) against a running store.
# It sleeps the store's TTL_SECONDS plus one second to let model A expire.
# Usage: ./test_ttl_smoke.sh   (STORE_URL, MODEL_A, MODEL_B, MODEL_C override the defaults)
set -uo pipefail
source "$(dirname "$0")/scripts/smoke_lib.sh"

require_store ttl - "CACHE_POLICY=ttl TTL_SECONDS=5 uv run model-swap up"
reset_store
step "A, cold" "$MODEL_A" 200 load_from_store
step "A within the TTL window" "$MODEL_A" 200 already_loaded
wait_s=$(awk -v t="$TTL_SECONDS" 'BEGIN { print t + 1 }')
echo
echo "(sleeping ${wait_s}s, past TTL_SECONDS=$TTL_SECONDS)"
sleep "$wait_s"
step "B after the TTL: A swept" "$MODEL_B" 200 load_from_store "$MODEL_A"
finish
