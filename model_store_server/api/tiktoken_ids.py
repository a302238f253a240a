"""Token arrays written in tiktoken's ``cl100k_base``, read back as the text they encode.

Clients written for OpenAI's embedding models count and cut their inputs with tiktoken
and send the ids instead of the text: LangChain's ``OpenAIEmbeddings`` on its default
settings (``check_embedding_ctx_length=True``) sends ``cl100k_base`` ids whatever the
model is called. Those are not a GGUF model's ids, so read as the model's they embed
other tokens than the user wrote (silently, when the model's vocabulary is larger).
With ``EMBEDDING_TOKEN_IDS=tiktoken`` (the default) the store decodes them to text
first, as LiteLLM's proxy does for every model that is not OpenAI's; with ``model`` they
are the model's own ids (vLLM's and llama-server's reading).

The encoding is loaded once, on first use, by tiktoken (its cache: TIKTOKEN_CACHE_DIR;
else it downloads the file once). A store that cannot load it refuses token arrays with
a 400 that says how to send text instead.
"""

from __future__ import annotations

import functools
import logging

from model_swap.errors import BadRequest

logger = logging.getLogger(__name__)

ENCODING = "cl100k_base"
TOKEN_ID_READINGS = ("tiktoken", "model")


@functools.cache
def load():
    """tiktoken's cl100k_base and None, or None and why it cannot be had (once per process;
    ``load.cache_clear()`` forgets)."""
    try:
        import tiktoken

        encoding = tiktoken.get_encoding(ENCODING)
    except Exception as err:  # not installed, no cached file and no network, ...
        error = f"{type(err).__name__}: {err}"
        logger.warning("tiktoken's %s cannot be loaded: %s", ENCODING, error)
        return None, error
    logger.info("token arrays on /v1/embeddings are read as %s ids", ENCODING)
    return encoding, None


def decode(ids: list[int], where: str) -> str:
    """The text ``ids`` (cl100k_base ids) encode; BadRequest naming ``where`` otherwise."""
    encoding, error = load()
    if encoding is None:
        raise BadRequest(
            f"{where}: token arrays are read as tiktoken {ENCODING} ids (what LangChain's "
            f"OpenAIEmbeddings sends), but this store cannot load that encoding ({error}). "
            "Send text (LangChain: check_embedding_ctx_length=False), or give the store "
            f"tiktoken's {ENCODING} file (TIKTOKEN_CACHE_DIR), or set "
            "EMBEDDING_TOKEN_IDS=model if the ids are the model's own",
            param="input",
        )
    bad = next((t for t in ids if not 0 <= t < encoding.n_vocab), None)
    if bad is not None:
        raise BadRequest(
            f"{where}: token id {bad} is not a {ENCODING} id (0-{encoding.n_vocab - 1}); "
            "set EMBEDDING_TOKEN_IDS=model to send the model's own ids",
            param="input",
        )
    try:
        text = encoding.decode(ids)
    except (KeyError, ValueError, OverflowError):  # an unused id inside the range
        raise BadRequest(f"{where} holds an id {ENCODING} does not use", param="input") from None
    if not text:
        raise BadRequest(f"{where} encodes no text", param="input")
    return text


def as_text(inputs: tuple[str | list[int], ...]) -> tuple[str, ...]:
    """Every token array of ``inputs`` decoded (texts unchanged)."""
    single = len(inputs) == 1
    return tuple(
        item if isinstance(item, str) else decode(item, "input" if single else f"input[{index}]")
        for index, item in enumerate(inputs)
    )
