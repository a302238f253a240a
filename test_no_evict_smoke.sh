#!/usr/bin/env bash
# Smoke test of the no-evict policy (MAX_CACHE_SIZE=2) against a running store.
# Usage: ./test_no_evict_smoke.sh   (STORE_URL, MODEL_A, MODEL_B, MODEL_C override the defaults)
set -uo pipefail
source "$(dirname "$0")/scripts/smoke_lib.sh"

require_store no-evict 2 "CACHE_POLICY=no-evict MAX_CACHE_SIZE=2 uv run model-swap up"
reset_store
step "A, cold" "$MODEL_A" 200 load_from_store
step "B, cold: cache now full" "$MODEL_B" 200 load_from_store
before=$(worker_bytes_received)
step "C, cache full: refused" "$MODEL_C" 503 rejected
check "bytes the worker received for the refused model" "$(($(worker_bytes_received) - before))" 0
finish
