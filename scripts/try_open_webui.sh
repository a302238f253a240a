#!/usr/bin/env bash
# Open WebUI against model-swap, end to end, on Open WebUI's default settings.
#
# Installs Open WebUI into its own virtual environment (OWUI_HOME, about 7 GB: it is
# not a dependency of this project and not run in CI), starts model-swap (`model-swap up`,
# the bundled Gemma 3 270M and the tiny models) and Open WebUI offline against the
# store's Ollama API and OpenAI API, then drives one chat in Debian's chromium with
# Playwright (scripts/open_webui_chat.py): native function calling is on by default, so
# Open WebUI attaches its built-in tools to the chat. It checks that an answer appears
# and writes a screenshot (docs/open_webui.png unless SCREENSHOT says otherwise).
#
#   scripts/try_open_webui.sh            # install once, then run
#   OWUI_HOME=/path MODEL=tiny-a:latest scripts/try_open_webui.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OWUI_HOME="${OWUI_HOME:-$HOME/.cache/model-swap-open-webui}"
OWUI_VERSION="${OWUI_VERSION:-0.12.4}"
STORE_PORT="${STORE_PORT:-18000}"
WORKER_PORT="${WORKER_PORT:-18080}"
OWUI_PORT="${OWUI_PORT:-18081}"
MODEL="${MODEL:-gemma-3-270m-q4_k_m:latest}"
# Open WebUI 0.12.4 offers its built-in tools (dozens) with every chat: about 6,400 prompt
# tokens with Gemma's tokenizer, more than the worker's default N_CTX of 2048 (a chat then
# shows "prompt is 6410 tokens; the context holds 2048 ..."). Gemma 3 270M takes 32k.
N_CTX="${N_CTX:-8192}"
SCREENSHOT="${SCREENSHOT:-$ROOT/docs/open_webui.png}"
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
WORK="$(mktemp -d)"
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -z "$CHROMIUM" ]]; then
    echo "chromium not found: apt-get install chromium (or set CHROMIUM=/path/to/chrome)" >&2
    exit 2
fi
if [[ ! -x "$OWUI_HOME/venv/bin/open-webui" ]]; then
    echo "installing Open WebUI $OWUI_VERSION into $OWUI_HOME/venv (about 7 GB, once)" >&2
    mkdir -p "$OWUI_HOME"
    uv venv --python 3.11 "$OWUI_HOME/venv" >&2
    VIRTUAL_ENV="$OWUI_HOME/venv" uv pip install "open-webui==$OWUI_VERSION" >&2
fi

wait_for() {  # url, seconds
    local deadline=$((SECONDS + $2))
    until curl -fs -o /dev/null "$1"; do
        if ((SECONDS > deadline)); then
            echo "timed out waiting for $1" >&2
            return 1
        fi
        sleep 1
    done
}

echo "starting model-swap (store :$STORE_PORT, worker :$WORKER_PORT)" >&2
(
    cd "$ROOT"
    export MODELS_DIR="${MODELS_DIR:-$ROOT/models}" STORE_PORT WORKER_PORT N_CTX \
        MODEL_CACHE_DIR="$WORK/worker-cache"
    exec uv run model-swap up
) >"$WORK/model-swap.log" 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:$STORE_PORT/api/version" 300

echo "starting Open WebUI on :$OWUI_PORT (offline)" >&2
(
    export DATA_DIR="$WORK/open-webui" PORT="$OWUI_PORT" HOST=127.0.0.1 \
        WEBUI_AUTH=False OFFLINE_MODE=True HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
        ENABLE_VERSION_UPDATE_CHECK=False ANONYMIZED_TELEMETRY=False DO_NOT_TRACK=True \
        SCARF_NO_ANALYTICS=True \
        ENABLE_OLLAMA_API=True OLLAMA_BASE_URL="http://127.0.0.1:$STORE_PORT" \
        ENABLE_OPENAI_API=True OPENAI_API_BASE_URL="http://127.0.0.1:$STORE_PORT/v1" \
        OPENAI_API_KEY=unused \
        RAG_EMBEDDING_ENGINE=ollama RAG_EMBEDDING_MODEL="tiny-a:latest" \
        RAG_EMBEDDING_MODEL_AUTO_UPDATE=False RAG_RERANKING_MODEL_AUTO_UPDATE=False \
        WHISPER_MODEL_AUTO_UPDATE=False
    mkdir -p "$DATA_DIR"
    cd "$WORK"  # it writes .webui_secret_key into its working directory
    exec "$OWUI_HOME/venv/bin/open-webui" serve --host 127.0.0.1 --port "$OWUI_PORT"
) >"$WORK/open-webui.log" 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:$OWUI_PORT/health" 600

echo "driving one chat with $MODEL in chromium" >&2
cd "$ROOT"
status=0
uv run python scripts/open_webui_chat.py \
    --url "http://127.0.0.1:$OWUI_PORT" --model "$MODEL" --chromium "$CHROMIUM" \
    --screenshot "$SCREENSHOT" || status=$?
echo "--- what the store answered (its [/user_request] lines) ---" >&2
grep -E '\[/user_request\]|POST /api/chat|POST /v1/chat' "$WORK/model-swap.log" | tail -n 20 >&2 || true
if ((status != 0)); then
    echo "--- open-webui log (last lines) ---" >&2
    tail -n 40 "$WORK/open-webui.log" >&2
fi
exit "$status"
