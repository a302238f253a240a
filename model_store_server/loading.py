"""A streaming OpenAI request that waits for its model's swap, told how the load goes.

``serve_streaming`` runs ``SwapService.serve`` in a thread. If the request's
decision is a load (a push or a load from the worker's disk), the response
starts right after the decision, with the decision's headers
(``X-Cache-Action``, ``X-Evicted``, ``X-Unloaded``, ``X-Model``), and sends
SSE comment lines (``: loading model-x 45%``) about once a second until the
model is ready; then the usual chunks follow. A load done within
LOADING_COMMENTS_AFTER seconds (default 1) is answered as if there had been no
comments: its status, headers and errors as before. SSE clients ignore comments;
people with curl can read them. Everything else (hits, rejections, errors
before the decision, and the wait behind another model's swap, which comes
before this request's decision) is answered as before: nothing is sent until
the decision is made. A failure after the comments started cannot change the
status any more: it ends the stream with an ``error`` event, as a generation
that breaks off does.
"""

from __future__ import annotations

import contextvars
import json
import threading
from collections.abc import Iterator

from model_store_server.core.grants import Ticket
from model_store_server.core.orchestrator import SwapService
from model_store_server.core.streams import Served
from model_store_server.decision import LOADS, Action
from model_swap.errors import ApiError, openai_error_body

COMMENT_INTERVAL_SECONDS = 1.0


class Loading:
    """A request whose model is being loaded: headers now, then comments, then the answer."""

    def __init__(self, service: SwapService, ticket: Ticket, call: _Call):
        self.service = service
        self.ticket = ticket
        self._call = call
        # The highest percentage shown so far: the comments never go back (once the push
        # is over its progress record is gone, while the worker still loads the model).
        self._shown: float | None = None

    def headers(self) -> dict[str, str]:
        headers = self.ticket.decision.headers()
        headers["X-Model"] = self.ticket.decision.model
        if self._call.worker:
            headers["X-Worker"] = self._call.worker
        headers["X-Accel-Buffering"] = "no"
        return headers

    def comment(self) -> bytes:
        """One SSE comment on the load's progress."""
        model = self.ticket.decision.model
        if self.ticket.decision.action is Action.LOAD_FROM_LOCAL_STORE:
            text = f"loading {model} from the worker's disk cache"
        else:
            progress = self.service.transfers.latest(model)
            view = progress.describe() if progress else None
            percent = view["percent"] if view is not None else None
            if percent is None and self._shown is not None:
                percent = 100.0  # the push was running and is over: the worker loads it
            if percent is not None:
                percent = max(percent, self._shown or 0.0)
                self._shown = percent
            if percent is None:
                text = f"loading {model} 0%"
            elif percent >= 100:
                text = f"loading {model} 100% (sent; the worker is loading it)"
            else:
                text = (
                    f"loading {model} {percent:.0f}% ({view['bytes_done']} of "
                    f"{view['bytes_total']} bytes, {view['mb_per_s']:.1f} MB/s)"
                )
        return f": {text}\n\n".encode()

    def comments(self, interval: float = COMMENT_INTERVAL_SECONDS) -> Iterator[bytes]:
        """Comments until the swap is done (at least one: the response starts with it)."""
        yield self.comment()
        while not self._call.finished.wait(interval):
            yield self.comment()

    @property
    def served(self) -> Served | None:
        """What ``serve`` returned, once ``comments`` has ended (None if it failed)."""
        return self._call.served

    @property
    def error(self) -> BaseException | None:
        return self._call.error

    def close(self) -> None:
        """The response is over (or the client left): end the generation, now or once
        the swap is done."""
        self._call.abandon()


class _Call:
    """One ``serve`` running in a thread, and what it came to."""

    def __init__(self):
        self.decided = threading.Event()
        self.finished = threading.Event()
        self.ticket: Ticket | None = None
        self.worker = ""  # the URL of the worker the model is loaded on
        self.served: Served | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._abandoned = False

    def on_decided(self, ticket: Ticket, *, worker: str = "") -> None:
        if self.ticket is None and ticket.owns_swap and ticket.decision.action in LOADS:
            self.ticket, self.worker = ticket, worker
            self.decided.set()

    def run(self, service: SwapService, model: str, job: dict, options: dict) -> None:
        try:
            served = service.serve(model, job, on_decided=self.on_decided, **options)
        except BaseException as err:  # noqa: BLE001 - handed to the request's thread
            self.error = err
        else:
            with self._lock:
                self.served, abandoned = served, self._abandoned
            if abandoned:  # nobody will read it: give the lease back
                served.close()
        finally:
            self.finished.set()
            self.decided.set()

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            served = self.served
        if served is not None:
            served.close()


def serve_streaming(service: SwapService, model: str, job: dict, **options) -> Served | Loading:
    """``service.serve(model, job, **options)``, or a ``Loading`` as soon as the decision
    is a load. Raises what ``serve`` raises when no load was decided."""
    call = _Call()
    record = options["record"] = service.start_request(options["route"], model)
    thread = threading.Thread(
        target=contextvars.copy_context().run,  # keeps the request id for the log lines
        args=(call.run, service, model, job, options),
        name="serve-streaming",
        daemon=True,
    )
    thread.start()
    call.decided.wait()
    # A load that is done within one comment interval is answered exactly as a request
    # without comments (its status, headers and errors as before); only a longer one
    # starts the response early.
    if call.ticket is None or call.finished.wait(service.settings.loading_comments_after):
        call.finished.wait()
        if call.error is not None:
            raise call.error
        return call.served
    # From here the client is sent 200 and comments: the request counts as that 200,
    # whatever the swap comes to (a late failure ends the stream with an error event).
    record.response_started = True
    return Loading(service, call.ticket, call)


def sse_error(err: BaseException) -> bytes:
    """OpenAI's error event, for a failure after the response started: the type the
    status would have had (a refused prompt is ``invalid_request_error``)."""
    if isinstance(err, ApiError):
        body = openai_error_body(err.status, err.type, err.message, err.param)
    else:
        body = openai_error_body(500, "internal_error", "the model could not be loaded")
    return b"data: " + json.dumps(body).encode() + b"\n\n"
