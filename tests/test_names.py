"""The shared model-name rule."""

from __future__ import annotations

import pytest

from model_swap.names import InvalidModelName, validate_model_name


@pytest.mark.parametrize(
    "name",
    [
        "tiny-a.gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "Mistral-7B.Q4_K_M(v2).gguf",
        "org+model@q4:latest,[1].gguf",
        "x" * 250 + ".gguf",
    ],
)
def test_plain_gguf_names_pass(name):
    assert validate_model_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        None,
        42,
        "",
        ".gguf",
        "model.bin",
        "model.gguf.txt",
        "../model.gguf",
        "..",
        "dir/model.gguf",
        "/etc/model.gguf",
        "dir\\model.gguf",
        "nul\x00.gguf",
        "new\nline.gguf",
        ".hidden.gguf",
        "x" * 251 + ".gguf",
        "e\u0301.gguf",  # combining accent
        "rtl\u202e.gguf",  # bidi override
        # Issue 32: a space and '=' let a name plant a second field in a log line; '<' and
        # quotes would be markup in the dashboard.
        "a action=hit.gguf",
        "Mistral-7B.Q4_K_M (v2).gguf",
        "<!--<script>.gguf",
        'quote".gguf',
        "amp&.gguf",
        "\u6a21\u578b.gguf",  # non-ASCII (cannot travel in an HTTP header)
        "\uff0e\uff0e\uff0fx.gguf",  # fullwidth ../
        " padded.gguf",
        "x" * 251 + ".gguf",
    ],
)
def test_bad_names_are_refused(name):
    with pytest.raises(InvalidModelName):
        validate_model_name(name)
