#!/usr/bin/env bash
# Smoke test of the lru-ttl policy (MAX_CACHE_SIZE=2, TTL_SECONDS=5 by default):
# a capacity eviction first, then a time eviction. Sleeps the store's TTL plus one second.
# Usage: ./test_lru_ttl_smoke.sh   (STORE_URL, MODEL_A, MODEL_B, MODEL_C override the defaults)
set -uo pipefail
source "$(dirname "$0")/scripts/smoke_lib.sh"

require_store lru-ttl 2 "CACHE_POLICY=lru-ttl MAX_CACHE_SIZE=2 TTL_SECONDS=5 uv run model-swap up"
reset_store
step "A, cold" "$MODEL_A" 200 load_from_store
step "B, cold" "$MODEL_B" 200 load_from_store
step "C, capacity eviction of least recently used A" "$MODEL_C" 200 load_from_store "$MODEL_A"
wait_s=$(awk -v t="$TTL_SECONDS" 'BEGIN { print t + 1 }')
echo
echo "(sleeping ${wait_s}s, past TTL_SECONDS=$TTL_SECONDS)"
sleep "$wait_s"
step "A after the TTL: time eviction of B and C" "$MODEL_A" 200 load_from_store "$MODEL_B,$MODEL_C"
finish
