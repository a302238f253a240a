"""The one rule for what a model name may be, shared by the store and the worker.

A model name is a plain file name ending in ``.gguf``, made of printable ASCII
characters: it never contains a path separator, a parent reference or a
control character, so joining it to a directory can never point outside that
directory, and it travels unchanged in an HTTP header (``X-Model-Name``) and a
URL path. Non-ASCII names are refused rather than normalised, so look-alike
Unicode names cannot alias each other.
"""

from __future__ import annotations

MAX_NAME_BYTES = 255
SUFFIX = ".gguf"


class InvalidModelName(ValueError):
    """Raised with a message a user can act on when a model name breaks the rule."""


def validate_model_name(name: object) -> str:
    """Return ``name`` unchanged if it is a valid model name, else raise InvalidModelName."""
    if not isinstance(name, str):
        raise InvalidModelName("model must be a string")
    if not name:
        raise InvalidModelName("model must not be empty")
    if len(name) > MAX_NAME_BYTES:
        raise InvalidModelName(f"model name must be at most {MAX_NAME_BYTES} characters")
    if not all(" " <= ch <= "~" for ch in name):
        raise InvalidModelName("model name must consist of printable ASCII characters")
    if name != name.strip():
        raise InvalidModelName("model name must not start or end with whitespace")
    if "/" in name or "\\" in name:
        raise InvalidModelName("model name must be a plain file name (no path separators)")
    if name in (".", "..") or name.startswith("."):
        raise InvalidModelName("model name must not start with '.'")
    if not name.endswith(SUFFIX) or len(name) == len(SUFFIX):
        raise InvalidModelName(f"model name must end in {SUFFIX}")
    return name


# Ollama's tag for the one version of a model (``tiny-a:latest``).
LATEST_TAG = ":latest"


def resolve_alias(name: object) -> str:
    """The file name a client means: ``tiny-a``, ``tiny-a:latest`` and ``tiny-a.gguf`` are
    all ``tiny-a.gguf`` (Ollama's way of naming models). Raises InvalidModelName."""
    if not isinstance(name, str):
        raise InvalidModelName("model must be a string")
    base = name.removesuffix(LATEST_TAG)
    if base and not base.endswith(SUFFIX):
        base += SUFFIX
    return validate_model_name(base)
