"""Reading settings from environment variables, with one clear error per bad value.

Each service's ``config.py`` lists its settings and defaults in one place and
uses ``EnvReader`` to apply overrides. A bad value raises ``SettingsError``
whose message names the variable and what would be valid, so start-up can
stop with exactly one line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from model_swap.logs import LOG_FORMATS
from model_swap.names import InvalidModelName, validate_model_name

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def _token_chars(value: str) -> bool:
    """Printable ASCII without spaces: what can travel in an Authorization header."""
    return all("!" <= c <= "~" for c in value)


_BYTE_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class SettingsError(ValueError):
    """A setting has a value the service cannot start with."""


class EnvReader:
    """Typed access to overrides in an environment mapping (``os.environ`` by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        self._env = os.environ if environ is None else environ

    def _raw(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None:
            return None
        return value.strip()

    def is_set(self, name: str) -> bool:
        """Whether ``name`` is in the environment with a value that is not blank."""
        return bool(self._raw(name))

    def text(self, name: str, default: str) -> str:
        value = self._raw(name)
        if value is None:
            return default
        if not value:
            raise SettingsError(f"{name}: must not be empty")
        return value

    def optional_text(self, name: str, default: str) -> str:
        """Like ``text``, but an empty value is allowed (and means "not set")."""
        value = self._raw(name)
        return default if value is None else value

    def host_list(self, name: str) -> tuple[str, ...]:
        """Comma-separated host names, lower-cased (empty when unset)."""
        raw = self.optional_text(name, "")
        return tuple(h.strip().lower() for h in raw.split(",") if h.strip())

    def secret(self, name: str, *, min_length: int = 16) -> str:
        """An optional secret (empty when unset); short ones are refused."""
        value = self._raw(name)
        if not value:
            return ""
        if len(value) < min_length or not _token_chars(value) or "," in value:
            raise SettingsError(
                f"{name}: too weak or unusable (valid: at least {min_length} printable "
                "ASCII characters, no spaces or commas)"
            )
        return value

    def secret_list(self, name: str, *, min_length: int = 16) -> tuple[str, ...]:
        """Comma-separated secrets (empty tuple when unset); each must be strong enough."""
        value = self._raw(name)
        if not value:
            return ()
        keys = tuple(k.strip() for k in value.split(",") if k.strip())
        for key in keys:
            if len(key) < min_length or not _token_chars(key):
                raise SettingsError(
                    f"{name}: a key is too weak or unusable (valid: each at least "
                    f"{min_length} printable ASCII characters, no spaces)"
                )
        return keys

    def path(self, name: str, default: str | Path) -> Path:
        return Path(self.text(name, str(default))).expanduser()

    def integer(self, name: str, default: int, *, minimum: int | None = None) -> int:
        value = self._raw(name)
        if value is None:
            result = default
        else:
            try:
                result = int(value)
            except ValueError:
                raise SettingsError(
                    f"{name}: {value!r} is not an integer"
                    + (f" (valid: an integer >= {minimum})" if minimum is not None else "")
                ) from None
        if minimum is not None and result < minimum:
            raise SettingsError(f"{name}: {result} is too small (valid: an integer >= {minimum})")
        return result

    def number(self, name: str, default: float, *, positive: bool = True) -> float:
        value = self._raw(name)
        if value is None:
            result = default
        else:
            try:
                result = float(value)
            except ValueError:
                raise SettingsError(f"{name}: {value!r} is not a number") from None
        if result != result or result in (float("inf"), float("-inf")):
            raise SettingsError(f"{name}: {value!r} is not a finite number")
        if positive and result <= 0:
            raise SettingsError(f"{name}: {result:g} is not valid (valid: a number > 0)")
        return result

    def byte_size(self, name: str, default: int) -> int:
        """Bytes as an integer or with a binary suffix: ``8G``, ``512MiB``, ``1.5GB`` (0: none)."""
        value = self._raw(name)
        if value is None:
            return default
        text = value.strip().upper().removesuffix("B").removesuffix("I")
        scale = 1
        if text and text[-1] in _BYTE_UNITS:
            scale, text = _BYTE_UNITS[text[-1]], text[:-1]
        try:
            result = float(text) * scale
        except ValueError:
            result = -1.0
        # A positive value under one byte would round to 0, which means "no bound".
        if not text or result != result or result < 0 or 0 < result < 1 or result == float("inf"):
            raise SettingsError(
                f"{name}: {value!r} is not a size (valid: bytes >= 0, or a number with "
                "K, M, G or T, powers of 1024, such as 8G or 512MiB)"
            )
        return int(result)

    def model_list(self, name: str) -> tuple[str, ...]:
        """Comma-separated model file names (empty tuple when unset), each a valid name."""
        value = self._raw(name) or ""
        names = [n.strip() for n in value.split(",") if n.strip()]
        for model in names:
            try:
                validate_model_name(model)
            except InvalidModelName as err:
                raise SettingsError(f"{name}: {model!r}: {err}") from None
        return tuple(dict.fromkeys(names))

    def flag(self, name: str, default: bool) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in TRUE_WORDS:
            return True
        if lowered in FALSE_WORDS:
            return False
        raise SettingsError(f"{name}: {value!r} is not valid (valid: 0 or 1)")

    def choice(self, name: str, default: str, choices: Iterable[str]) -> str:
        options = list(choices)
        value = self.text(name, default)
        if value not in options:
            raise SettingsError(f"{name}: {value!r} is not valid (valid: {', '.join(options)})")
        return value

    def port(self, name: str, default: int) -> int:
        result = self.integer(name, default, minimum=0)
        if result > 65535:
            raise SettingsError(f"{name}: {result} is not a port (valid: 0-65535)")
        return result

    def url(self, name: str, default: str) -> str:
        value = self.text(name, default)
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise SettingsError(f"{name}: {value!r} has an invalid port") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(
                f"{name}: {value!r} is not valid (valid: an http:// or https:// URL with a host)"
            )
        if parts.query or parts.fragment or parts.path not in ("", "/"):
            raise SettingsError(
                f"{name}: {value!r} must not have a path, query or fragment "
                "(valid: scheme, host and port only)"
            )
        return value.rstrip("/")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def shared_options(env: EnvReader, defaults: Mapping[str, object]) -> dict:
    """The settings both services read the same way, as settings fields: logging
    (LOG_LEVEL, LOG_FORMAT), METRICS_PUBLIC, the request bounds (MAX_MESSAGES,
    MAX_REQUEST_BYTES), WORKER_TOKEN, the RDMA listener's port and device
    (WORKER_RDMA_PORT, ``rdma_port_choice``) and the front server's
    (``serving_options``). Each service's ``config.py`` keeps their defaults."""
    return {
        "max_messages": env.integer("MAX_MESSAGES", defaults["MAX_MESSAGES"], minimum=1),
        "max_request_bytes": env.integer(
            "MAX_REQUEST_BYTES", defaults["MAX_REQUEST_BYTES"], minimum=1024
        ),
        "worker_token": env.secret("WORKER_TOKEN"),
        "log_level": env.choice("LOG_LEVEL", defaults["LOG_LEVEL"], LOG_LEVELS),
        "log_format": env.choice("LOG_FORMAT", defaults["LOG_FORMAT"], LOG_FORMATS),
        "metrics_public": env.flag("METRICS_PUBLIC", defaults["METRICS_PUBLIC"]),
        "worker_rdma_port": env.port("WORKER_RDMA_PORT", defaults["WORKER_RDMA_PORT"]),
        **rdma_port_choice(env, defaults),
        **serving_options(env, defaults),
    }


def rdma_port_choice(env: EnvReader, defaults: Mapping[str, object]) -> dict:
    """RDMA_DEVICE, RDMA_DEVICE_PORT and RDMA_GID_INDEX (both services), as settings fields."""
    return {
        "rdma_device": env.optional_text("RDMA_DEVICE", defaults["RDMA_DEVICE"]),
        "rdma_device_port": env.integer(
            "RDMA_DEVICE_PORT", defaults["RDMA_DEVICE_PORT"], minimum=0
        ),
        "rdma_gid_index": env.integer("RDMA_GID_INDEX", defaults["RDMA_GID_INDEX"], minimum=-1),
    }


def serving_options(env: EnvReader, defaults: Mapping[str, object]) -> dict:
    """The front server's settings (both services, model_swap/serving.py): SERVER_THREADS,
    SHUTDOWN_GRACE_SECONDS, STREAM_WRITE_TIMEOUT, HEADER_TIMEOUT, KEEPALIVE_TIMEOUT,
    MAX_CONNECTIONS, MAX_QUEUED_REQUESTS, MIN_UPLOAD_RATE and MIN_DOWNLOAD_RATE."""
    rates = {}
    for name in ("MIN_UPLOAD_RATE", "MIN_DOWNLOAD_RATE"):
        rate = env.number(name, defaults[name], positive=False)
        if rate < 0:
            raise SettingsError(
                f"{name}: {rate:g} is not valid (valid: bytes/s >= 0; 0 turns it off)"
            )
        rates[name.lower()] = rate
    return {
        **rates,
        "max_queued_requests": env.integer(
            "MAX_QUEUED_REQUESTS", defaults["MAX_QUEUED_REQUESTS"], minimum=1
        ),
        "header_timeout": env.number("HEADER_TIMEOUT", defaults["HEADER_TIMEOUT"]),
        "keepalive_timeout": env.number("KEEPALIVE_TIMEOUT", defaults["KEEPALIVE_TIMEOUT"]),
        "max_connections": env.integer("MAX_CONNECTIONS", defaults["MAX_CONNECTIONS"], minimum=1),
        "server_threads": env.integer("SERVER_THREADS", defaults["SERVER_THREADS"], minimum=1),
        "shutdown_grace_seconds": env.number(
            "SHUTDOWN_GRACE_SECONDS", defaults["SHUTDOWN_GRACE_SECONDS"]
        ),
        "stream_write_timeout": env.number(
            "STREAM_WRITE_TIMEOUT", defaults["STREAM_WRITE_TIMEOUT"]
        ),
    }
