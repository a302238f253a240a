"""The one rule for what a model name may be, shared by the store and the worker.

A model name is a plain file name ending in ``.gguf``: it never contains a
path separator, a parent reference or a control character, so joining it to
a directory can never point outside that directory.
"""

from __future__ import annotations

import unicodedata

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
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidModelName(f"model name must be at most {MAX_NAME_BYTES} bytes")
    if unicodedata.normalize("NFC", name) != name:
        raise InvalidModelName("model name must be in Unicode NFC form")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in name):
        raise InvalidModelName("model name must not contain control or format characters")
    if "/" in name or "\\" in name:
        raise InvalidModelName("model name must be a plain file name (no path separators)")
    if name in (".", "..") or name.startswith("."):
        raise InvalidModelName("model name must not start with '.'")
    if not name.endswith(SUFFIX) or len(name) == len(SUFFIX):
        raise InvalidModelName(f"model name must end in {SUFFIX}")
    return name
