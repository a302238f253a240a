#!/usr/bin/env bash
# Build llama.cpp's llama-server from the llama.cpp that llama-cpp-python vendors, so the
# batching benchmark compares the worker against the very same kernels.
#
# Usage: scripts/build_llama_server.sh [DEST]      (DEST defaults to .peer/ in the repo)
#   The binary lands in DEST/bin/llama-server; the benchmarks find it there or through
#   LLAMA_SERVER_BIN.
# Source: LLAMA_CPP_PYTHON_SRC (an unpacked llama-cpp-python sdist) if set, else the sdist that
#   uv unpacked into its cache when it built the wheel, else `pip download` of the sdist.
# Other settings: LLAMA_CPP_PYTHON_VERSION (default 0.3.36), JOBS (default: nproc).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dest="$(mkdir -p "${1:-$repo/.peer}" && cd "${1:-$repo/.peer}" && pwd)"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
jobs="${JOBS:-$(nproc)}"

find_source() {
    if [[ -n "${LLAMA_CPP_PYTHON_SRC:-}" ]]; then
        echo "$LLAMA_CPP_PYTHON_SRC"
        return
    fi
    local cache
    cache="$(uv cache dir 2>/dev/null || echo "$HOME/.cache/uv")"
    local found
    found="$(find "$cache" -maxdepth 6 -type d -path "*llama-cpp-python/$version/*/src" \
        2>/dev/null | head -n 1 || true)"
    if [[ -n "$found" && -f "$found/vendor/llama.cpp/CMakeLists.txt" ]]; then
        echo "$found"
        return
    fi
    echo "no unpacked sdist in uv's cache; downloading llama-cpp-python==$version" >&2
    mkdir -p "$dest/sdist"
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$dest/sdist" \
        "llama-cpp-python==$version" >&2
    tar -xzf "$dest/sdist/llama_cpp_python-$version.tar.gz" -C "$dest/sdist"
    echo "$dest/sdist/llama_cpp_python-$version"
}

src="$(find_source)"
llama="$src/vendor/llama.cpp"
if [[ ! -f "$llama/CMakeLists.txt" ]]; then
    echo "error: $llama has no CMakeLists.txt (not a llama-cpp-python sdist?)" >&2
    exit 2
fi
echo "building llama-server from $llama into $dest with $jobs jobs"

# No web UI (a prebuilt one would be fetched from the network) and no curl: the server only
# serves the benchmark's completions.
cmake -S "$llama" -B "$dest/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DBUILD_SHARED_LIBS=OFF
cmake --build "$dest/build" --target llama-server -j "$jobs"
mkdir -p "$dest/bin"
cp "$dest/build/bin/llama-server" "$dest/bin/llama-server"
"$dest/bin/llama-server" --version
echo "llama-server: $dest/bin/llama-server"
