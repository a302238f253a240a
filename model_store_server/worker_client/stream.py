"""A streaming inference answer from a worker, read as it arrives.

Read to its end, its connection goes back to the pool; closed midway, the
connection is closed, so the worker sees the disconnect and stops generating.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator

from model_store_server.worker_client.errors import broke_off

STREAM_READ_BYTES = 64 * 1024


class InferenceStream:
    """A streaming inference response from the worker; iterate for text, then ``close``."""

    def __init__(
        self,
        connection: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        checkin: Callable[[http.client.HTTPConnection, http.client.HTTPResponse], None],
    ):
        self._connection: http.client.HTTPConnection | None = connection
        self._response = response
        self._checkin = checkin
        self.model = response.getheader("X-Model")

    def __iter__(self) -> Iterator[bytes]:
        try:
            # read1 returns what has arrived (one token's chunk) instead of waiting for more.
            while chunk := self._response.read1(STREAM_READ_BYTES):
                yield chunk
        except (OSError, http.client.HTTPException) as err:
            raise broke_off("POST /infer (streaming)", err) from err

    def close(self) -> None:
        """A stream read to its end gives its connection back to the pool; one left
        midway closes it (the worker sees the disconnect and stops generating).
        Idempotent: the connection is given back once."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._checkin(connection, self._response)
