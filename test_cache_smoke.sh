#!/usr/bin/env bash
# Smoke test of the lru policy (MAX_CACHE_SIZE=2) against a running store.
# Usage: ./test_cache_smoke.sh   (STORE_URL, MODEL_A, MODEL_B, MODEL_C override the defaults)
set -uo pipefail
source "$(dirname "$0")/scripts/smoke_lib.sh"

require_store lru 2 "CACHE_POLICY=lru MAX_CACHE_SIZE=2 uv run model-swap up"
reset_store
step "A, cold" "$MODEL_A" 200 load_from_store
step "A again" "$MODEL_A" 200 already_loaded
step "B, cold" "$MODEL_B" 200 load_from_store
step "C, cache full: evict least recently used A" "$MODEL_C" 200 load_from_store "$MODEL_A"
step "A again: evict least recently used B" "$MODEL_A" 200 load_from_store "$MODEL_B"
finish
