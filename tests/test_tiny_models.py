"""Tiny models: llama.cpp loads and runs them, each is distinct, size is tunable."""

from __future__ import annotations

from gguf import GGUFReader

from inference_worker.engine import Engine, Job
from model_swap.digest import file_sha256
from model_swap.tiny_models import tiny_model_names, write_tiny_model, write_tiny_models


def test_names():
    assert tiny_model_names(3) == ["tiny-a.gguf", "tiny-b.gguf", "tiny-c.gguf"]
    assert tiny_model_names(28)[-2:] == ["tiny-aa.gguf", "tiny-ab.gguf"]


def test_written_models_are_distinct_and_named(tmp_path):
    paths = write_tiny_models(tmp_path, count=2)
    digests = {file_sha256(p) for p in paths}
    assert len(digests) == 2
    for path in paths:
        field = GGUFReader(path).fields["general.name"]
        assert bytes(field.parts[field.data[0]]).decode() == path.stem
        assert path.stat().st_size < 1024 * 1024
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_size_is_tunable(tmp_path):
    path = write_tiny_model(tmp_path / "big.gguf", size_mb=20)
    assert abs(path.stat().st_size - 20 * 1024 * 1024) < 1024 * 1024


def test_llama_cpp_generates_real_tokens(tmp_path):
    path = write_tiny_model(tmp_path / "tiny-z.gguf", size_mb=5)
    engine = Engine(n_ctx=256)
    engine.load("tiny-z.gguf", path)
    generation = engine.begin("tiny-z.gguf", Job(prompt="hello world", max_tokens=12))
    try:
        pieces = list(generation.tokens())
    finally:
        generation.close()
    assert len(pieces) >= 2
    assert "".join(pieces)
