#!/usr/bin/env bash
# GPU check for the worker (issue 17). The GPU path is UNVERIFIED on a GPU (written where none
# was available); every step after the CUDA build also runs without one (`run --cpu`, covered
# by tests/test_benchmarks.py), so only the build and nvidia-smi are new on the day a GPU is lent.
#
#   benchmarks/gpu_check.sh pack [BUNDLE]            # where PyPI is reachable, repository root
#   benchmarks/gpu_check.sh run [--quick] [BUNDLE]   # on the GPU machine (no network)
#   benchmarks/gpu_check.sh run --cpu [--quick] [BUNDLE]
#       no GPU: skips the CUDA build and the bundle's virtual environment and runs the same
#       steps with the CPU llama-cpp-python installed here ($PYTHON, default .venv/bin/python;
#       llama-server from $LLAMA_SERVER_BIN or .peer/bin when built, else skipped)
#   --quick: a tiny model instead of Gemma 3 270M and one round of each benchmark (minutes)
#
# BUNDLE (default .gpu-bundle/, git-ignored) carries everything the GPU machine needs:
#   src/          llama-cpp-python 0.3.36's sdist, unpacked, without vendor/llama.cpp/models
#   wheels/       the worker's dependencies as wheels (uv.lock, llama-cpp-python excluded),
#                 Gemma 3 270M's wheel among them
#   requirements.txt
# `run` needs nvidia-smi, nvcc, cmake, ninja (or make), a C++ compiler and the same Python
# minor version `pack` ran with. It builds llama.cpp once, from the sources llama-cpp-python
# vendors, with -DGGML_CUDA=ON for this GPU's architecture only: the shared libraries
# llama-cpp-python loads (LLAMA_CPP_LIB_PATH, no wheel build) and llama-server (the peer).
# Then it reports, into BUNDLE/report/:
#   1. offload.txt   llama.cpp's log lines saying how many layers went to the GPU
#   2. swaps.md      cold / warm swap and hit through the store against bare llama-cpp-python
#                    (load + first token), and VRAM used by the worker against the estimate
#   3. BATCHING.md   benchmarks/batching.py: 1/2/4/8 streams, staggered closed-loop clients
#                    and Poisson arrivals, model-swap vs llama-server
# Budget: about 10 minutes on 16 cores (the CUDA build is most of it).
set -euo pipefail

mode="${1:-}"
shift || true
cpu=0
quick=0
while [[ "${1:-}" == --* ]]; do
    case "$1" in
    --cpu) cpu=1 ;;
    --quick) quick=1 ;;
    *)
        echo "error: unknown option $1" >&2
        exit 2
        ;;
    esac
    shift
done
repo="$(cd "$(dirname "$0")/.." && pwd)"
bundle="$(mkdir -p "${1:-$repo/.gpu-bundle}" && cd "${1:-$repo/.gpu-bundle}" && pwd)"
version=0.3.36

pack() {
    cd "$repo"
    local src
    src="$(find "$(uv cache dir)" -maxdepth 6 -type d -path "*llama-cpp-python/$version/*/src" \
        2>/dev/null | head -n 1 || true)"
    if [[ -z "$src" ]]; then
        python3 -m pip download --no-deps --no-binary :all: -d "$bundle/sdist" \
            "llama-cpp-python==$version"
        tar -xzf "$bundle/sdist/llama_cpp_python-$version.tar.gz" -C "$bundle/sdist"
        src="$bundle/sdist/llama_cpp_python-$version"
    fi
    rm -rf "$bundle/src"
    mkdir -p "$bundle/src"
    tar -C "$src" --exclude=./vendor/llama.cpp/models --exclude=./.git -cf - . \
        | tar -C "$bundle/src" -xf -
    uv export --frozen --no-hashes --no-dev --no-emit-project \
        | grep -v '^llama-cpp-python' | grep -v '^ *#' >"$bundle/requirements.txt"
    python3 -m pip download --only-binary :all: -d "$bundle/wheels" -r "$bundle/requirements.txt"
    python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' >"$bundle/python-version"
    du -sh "$bundle/src" "$bundle/wheels"
    echo "bundle ready: $bundle (copy it with the repository; then: $0 run)"
}

# 1-2 on a GPU: one CUDA build of the vendored llama.cpp, and a virtual environment.
setup_gpu() {
    command -v nvidia-smi >/dev/null || { echo "error: no nvidia-smi (or: run --cpu)" >&2; exit 2; }
    command -v nvcc >/dev/null || { echo "error: no nvcc (CUDA toolkit)" >&2; exit 2; }
    local want have arch jobs report="$bundle/report"
    want="$(cat "$bundle/python-version")"
    have="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    [[ "$want" == "$have" ]] || { echo "error: wheels are for Python $want, python3 is $have" >&2; exit 2; }
    arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' .')"
    jobs="$(nproc)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$report/gpu.txt"
    echo "CUDA architecture: $arch"

    # 1. One CUDA build of the vendored llama.cpp: libllama/libggml*/libmtmd and llama-server.
    local generator=()
    command -v ninja >/dev/null && generator=(-G Ninja)
    local build="$bundle/build-cuda"
    time cmake -S "$bundle/src/vendor/llama.cpp" -B "$build" "${generator[@]}" \
        -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
        -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" -DGGML_NATIVE=ON \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF >"$report/cmake.log"
    time cmake --build "$build" --target llama mtmd llama-server -j "$jobs" >>"$report/cmake.log"

    # 2. A virtual environment from the carried wheels; llama_cpp from the carried source,
    #    loading the CUDA libraries just built (no wheel build).
    python3 -m venv "$bundle/venv"
    "$bundle/venv/bin/pip" install --quiet --no-index --find-links "$bundle/wheels" \
        -r "$bundle/requirements.txt"
    export PATH="$bundle/venv/bin:$PATH"
    export PYTHONPATH="$repo:$bundle/src"
    export LLAMA_CPP_LIB_PATH="$build/bin" MTMD_CPP_LIB="$build/bin"
    export LLAMA_SERVER_BIN="$build/bin/llama-server" N_GPU_LAYERS=-1
}

# Without a GPU: the CPU llama-cpp-python installed here, and the peer where it was built.
setup_cpu() {
    local py="${PYTHON:-$repo/.venv/bin/python}"
    [[ -x "$py" ]] || { echo "error: no Python at $py (uv sync, or set PYTHON)" >&2; exit 2; }
    mkdir -p "$bundle/bin"
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$py" >"$bundle/bin/python"  # a venv's python: not a link
    chmod +x "$bundle/bin/python"
    export PATH="$bundle/bin:$PATH"
    export PYTHONPATH="$repo"
    export N_GPU_LAYERS=0
    python -c 'import llama_cpp; print("CPU run, llama-cpp-python", llama_cpp.__version__)' \
        | tee "$bundle/report/gpu.txt"
}

run() {
    cd "$repo"
    local report="$bundle/report"
    mkdir -p "$report"
    if ((cpu)); then
        setup_cpu
    else
        setup_gpu
    fi
    local models="$bundle/models" gemma repeats=3 quick_flag=()
    mkdir -p "$models"
    if ((quick)); then
        repeats=1
        quick_flag=(--quick)
    fi
    # Both imports run either way, so the quick run proves the full run's import too.
    gemma="$(python - "$models" "$quick" <<'EOF'
import sys
from pathlib import Path
from model_swap.tiny_models import write_tiny_model
from model_swap_cli.cli import ensure_default_model
models = Path(sys.argv[1])
print(write_tiny_model(models / "tiny-check.gguf") if sys.argv[2] == "1" else ensure_default_model(models))
EOF
)"

    # 3. Layers on the GPU, in llama.cpp's own words.
    python - "$gemma" >"$report/offload.txt" 2>&1 <<'EOF' || true
import sys
from llama_cpp import Llama
llm = Llama(sys.argv[1], n_gpu_layers=-1, n_ctx=2048, verbose=True)
llm.close()
EOF
    grep -Ei "offload|CUDA0|using device" "$report/offload.txt" | tee "$report/offload-summary.txt" \
        || echo "no offload lines (no GPU backend)" | tee "$report/offload-summary.txt"

    # 4. Swaps and VRAM through the real services.
    python benchmarks/gpu_swaps.py "$models" "$(basename "$gemma")" --repeats "$repeats" \
        | tee "$report/swaps.md"

    # 5. The batching benchmark, both servers on the same device.
    python benchmarks/batching.py "${quick_flag[@]}" --model "$gemma" --out "$report/BATCHING.md"
    echo "report: $report"
}

case "$mode" in
pack) pack ;;
run) run ;;
*)
    echo "usage: $0 pack [BUNDLE] | run [--cpu] [--quick] [BUNDLE]" >&2
    exit 2
    ;;
esac
