"""Ollama's model names and model descriptions (``/api/tags``, ``/api/ps``, ``/api/show``).

Ollama users type ``tiny-a``, ``tiny-a:latest`` or (for a file) ``tiny-a.gguf``;
``model_file`` maps each onto the file name the store serves, and
``ollama_name`` lists a file the way Ollama lists a model (``tiny-a:latest``).
The rest formats what a GGUF header says (``model_swap.footprint.read_header``)
and what the store's status says into Ollama's shapes. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gguf import LlamaFileType

from model_swap.errors import NotFound
from model_swap.names import SUFFIX, InvalidModelName, resolve_alias

TAG = ":latest"
# Architectures that only encode (embedding models): no completion, no tools.
ENCODERS = (
    "bert",
    "nomic-bert",
    "nomic-bert-moe",
    "jina-bert-v2",
    "modern-bert",
    "neo-bert",
    "t5encoder",
)
# An expiry Ollama's clients can parse for a model kept until capacity needs its place.
FOREVER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


class ModelMissing(NotFound):
    """Ollama's message for a model it does not have."""

    def __init__(self, name: str):
        super().__init__(f'model "{name}" not found, try pulling it first', param="model")


def model_file(name: object) -> str:
    """The store's file name for an Ollama model name; ModelMissing if none can be."""
    if not isinstance(name, str) or not name:
        raise ModelMissing(str(name or ""))
    try:
        return resolve_alias(name)
    except InvalidModelName:
        raise ModelMissing(name) from None


def ollama_name(file_name: str) -> str:
    """``tiny-a.gguf`` -> ``tiny-a:latest``."""
    return file_name[: -len(SUFFIX)] + TAG


def timestamp(moment: datetime) -> str:
    """RFC 3339 with nanoseconds' digits and ``Z``, as Ollama writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def now() -> str:
    return timestamp(datetime.now(UTC))


@dataclass(frozen=True)
class Header:
    """What a model file's GGUF header says, for Ollama's descriptions."""

    metadata: dict
    parameters: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def details(self) -> dict:
        """Ollama's ``details`` object."""
        arch = self.architecture
        return {
            "parent_model": "",
            "format": "gguf",
            "family": arch,
            "families": [arch] if arch else None,
            "parameter_size": parameter_size(self.parameters),
            "quantization_level": quantization(self.metadata.get("general.file_type")),
        }

    def model_info(self) -> dict:
        """The header's scalar and string keys (arrays such as the vocabulary left out),
        plus ``general.parameter_count``."""
        info = {
            key: value
            for key, value in self.metadata.items()
            if isinstance(value, str | int | float | bool)
        }
        info["general.parameter_count"] = self.parameters
        return dict(sorted(info.items()))

    def capabilities(self) -> list[str]:
        """What model-swap serves on this model: every model embeds; a generative one also
        completes and calls tools (natively when its template takes them, else in the
        generic format); an encoder (BERT and kin) only embeds."""
        if self.architecture in ENCODERS:
            return ["embedding"]
        return ["completion", "tools", "embedding"]

    @property
    def template(self) -> str:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else ""

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return value if isinstance(value, int) else None


def parameter_size(count: int) -> str:
    """``268.1M``, ``7.2B``: Ollama's way of writing a parameter count."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def quantization(file_type: object) -> str:
    """``Q4_K_M``, ``F16``...: the name of GGUF's ``general.file_type``."""
    try:
        return LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
    except (TypeError, ValueError):
        return "unknown"


def tag_entry(file_name: str, size: int, mtime: float, digest: str, header: Header | None) -> dict:
    """One model of ``/api/tags``."""
    name = ollama_name(file_name)
    return {
        "name": name,
        "model": name,
        "modified_at": timestamp(datetime.fromtimestamp(mtime, UTC)),
        "size": size,
        "digest": digest,
        "details": header.details() if header else {"format": "gguf"},
    }


def expires_at(keep_alive: float | None, ttl: float | None, idle_seconds: float) -> datetime:
    """When a resident model will be unloaded if nothing uses it: its ``keep_alive`` (a
    negative one: never), else the policy's TTL, else never (capacity decides)."""
    seconds = keep_alive if keep_alive is not None else ttl
    if seconds is None or seconds < 0:
        return FOREVER
    return datetime.now(UTC) + timedelta(seconds=max(0.0, seconds - idle_seconds))


def ps_entry(
    entry: dict, ttl: float | None, digest: str, header: Header | None, context_length: int | None
) -> dict:
    """One model of ``/api/ps`` from a ``/status`` ``resident`` entry."""
    name = ollama_name(entry["name"])
    expiry = expires_at(entry.get("keep_alive"), ttl, entry.get("idle_seconds", 0.0))
    return {
        "name": name,
        "model": name,
        "size": entry.get("estimated_bytes", 0),
        "digest": digest,
        "details": header.details() if header else {"format": "gguf"},
        "expires_at": timestamp(expiry),
        "size_vram": 0,
        "context_length": context_length,
    }


def show_body(header: Header, mtime: float) -> dict:
    """``/api/show``: details, the header's keys, the chat template if any."""
    capabilities = header.capabilities()
    return {
        "modelfile": "",
        "parameters": "",
        "template": header.template,
        "details": header.details(),
        "model_info": header.model_info(),
        "capabilities": capabilities,
        "modified_at": timestamp(datetime.fromtimestamp(mtime, UTC)),
    }
