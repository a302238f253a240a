"""The inference worker's HTTP routes (Flask application factory).

Routes only parse and validate, call the model cache or the engine, and format
the answer; errors use the shared JSON envelope.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_worker.access import install_browser_guard
from inference_worker.chat import ChatTemplateError
from inference_worker.config import WorkerSettings
from inference_worker.embedding_call import embed_response
from inference_worker.engine import (
    Engine,
    ModelLoadError,
    NotLoaded,
    OutOfVocabulary,
    PromptTooLong,
)
from inference_worker.jobs import parse_job
from inference_worker.kv_disk import KvDisk
from inference_worker.metrics import WorkerMetrics
from inference_worker.model_cache import ModelCache, NoSpace, UploadRejected
from inference_worker.rdma_listener import RdmaListener
from inference_worker.structured import GrammarError
from inference_worker.upload_headers import (
    expected_digest,
    expected_size,
    model_name_arg,
    model_name_header,
)
from model_swap.auth import require_worker_auth
from model_swap.errors import (
    BadRequest,
    Conflict,
    InsufficientStorage,
    NotFound,
    PayloadInvalid,
    register_error_handlers,
)
from model_swap.generation import TOGETHER_HEADER, parse_together
from model_swap.logs import install_request_ids
from model_swap.rdma_setup import endpoints_for
from model_swap.requests_json import read_json_object

logger = logging.getLogger(__name__)


STREAM_FORMATS = ("text", "events")


def _stream_format(body: dict) -> str:
    value = body.get("stream_format", "text")
    if value not in STREAM_FORMATS:
        raise BadRequest(f"stream_format must be one of {', '.join(STREAM_FORMATS)}")
    return value


def _event(data: dict) -> bytes:
    """One line of the ``events`` stream format (newline-delimited JSON)."""
    return json.dumps(data, ensure_ascii=False).encode() + b"\n"


def create_app(settings: WorkerSettings | None = None) -> Flask:
    """Build a worker app with its own cache and engine (no global state)."""
    settings = settings or WorkerSettings.from_env()
    cache = ModelCache(settings.model_cache_dir)
    kv_disk = KvDisk(
        cache.directory / ".kv",
        settings.kv_disk_bytes,
        version=lambda path: cache.digest(path.name),
    )
    kv_disk.prune({f.name for f in cache.files()})
    engine = Engine(
        n_gpu_layers=settings.n_gpu_layers,
        n_ctx=settings.n_ctx,
        parallel=settings.parallel,
        prefix_cache=settings.prefix_cache,
        embedding_tokens=settings.embedding_tokens,
        n_threads=settings.n_threads,
        kv_cache_bytes=settings.kv_cache_bytes,
        kv_disk=kv_disk,
    )

    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.extensions["model_cache"] = cache
    app.extensions["engine"] = engine
    metrics = WorkerMetrics(engine, cache)
    app.extensions["metrics"] = metrics
    # GET /ready, answered by the front server's loop (quick, never waits): the worker
    # accepts work while its model cache directory is there and writable.
    app.extensions["readiness"] = lambda: (
        os.access(cache.directory, os.W_OK | os.X_OK),
        {},
    )
    if settings.worker_rdma:
        listener = RdmaListener(
            cache,
            settings.worker_host,
            settings.worker_rdma_port,
            token=settings.worker_token,
            endpoints=endpoints_for(settings),
            max_offers=settings.worker_rdma_max_offers,
        )
        app.extensions["rdma_listener"] = listener.start()
    register_error_handlers(app)
    install_request_ids(app)
    require_worker_auth(
        app,
        settings.worker_token,
        realm="inference-worker",
        open_paths=("/metrics",) if settings.metrics_public else (),
    )
    install_browser_guard(app, settings)

    def receive(name: str):
        try:
            received = cache.receive(name, request.stream, expected_size(), expected_digest())
        except UploadRejected as err:
            metrics.uploads.labels("rejected").inc()
            raise BadRequest(f"upload of {name} refused: {err}") from None
        except NoSpace as err:
            metrics.uploads.labels("no_space").inc()
            raise InsufficientStorage(str(err)) from None
        metrics.uploads.labels("ok").inc()
        metrics.model_arrived(name)
        metrics.receive_seconds.observe(received.seconds)
        rate = received.nbytes / received.seconds / 1e6 if received.seconds > 0 else 0.0
        if received.seconds > 0:
            metrics.receive_rate.observe(received.nbytes / received.seconds)
        logger.info(
            "received %s: %d bytes in %.3fs (%.1f MB/s)",
            name,
            received.nbytes,
            received.seconds,
            rate,
        )
        return received

    def load(name: str):
        try:
            loaded = engine.load(name, cache.path(name))
        except ModelLoadError as err:
            metrics.loads.labels("failed").inc()
            raise PayloadInvalid(str(err)) from None
        metrics.loads.labels("ok").inc()
        metrics.load_seconds.observe(loaded.seconds)
        return loaded

    @app.post("/load_model_from_store")
    def load_model_from_store():
        name = model_name_header()
        received = receive(name)
        loaded = load(name)
        return jsonify(
            model=name,
            bytes=received.nbytes,
            receive_seconds=round(received.seconds, 6),
            load_seconds=round(loaded.seconds, 6),
            estimated_bytes=loaded.estimated_bytes,
        )

    @app.post("/cache_model")
    def cache_model():
        name = model_name_header()
        received = receive(name)
        return jsonify(
            model=name, bytes=received.nbytes, receive_seconds=round(received.seconds, 6)
        )

    @app.post("/adopt_model")
    def adopt_model():
        """Take a file the store placed in the cache directory (same filesystem, no copy)."""
        name = model_name_header()
        placed = request.headers.get("X-Placed-Name")
        if placed is None:
            raise BadRequest("the X-Placed-Name header is required")
        size = expected_size()
        if size is None:
            raise BadRequest("the X-Model-Size header is required")
        try:
            adopted = cache.adopt(name, placed, size, expected_digest())
        except UploadRejected as err:
            metrics.uploads.labels("rejected").inc()
            raise BadRequest(f"placed file for {name} refused: {err}") from None
        metrics.uploads.labels("ok").inc()
        metrics.model_arrived(name)
        logger.info(
            "adopted %s: %d bytes placed by the store, verified in %.3fs",
            name,
            adopted.nbytes,
            adopted.seconds,
        )
        answer = {
            "model": name,
            "bytes": adopted.nbytes,
            "receive_seconds": round(adopted.seconds, 6),
        }
        if request.args.get("load") == "1":
            loaded = load(name)
            answer.update(
                load_seconds=round(loaded.seconds, 6), estimated_bytes=loaded.estimated_bytes
            )
        return jsonify(answer)

    @app.post("/cache_probe")
    def cache_probe():
        """The content of a probe file the store wrote: proves both see one directory."""
        placed = request.headers.get("X-Placed-Name", "")
        try:
            content = cache.read_probe(placed)
        except UploadRejected as err:
            raise NotFound(str(err)) from None
        return jsonify(content=content.decode("ascii", errors="replace"))

    @app.post("/load_model_from_local_store")
    def load_model_from_local_store():
        name = model_name_header()
        if not cache.contains(name):
            raise NotFound(f"{name} is not in the worker's cache")
        loaded = load(name)
        return jsonify(
            model=name,
            load_seconds=round(loaded.seconds, 6),
            estimated_bytes=loaded.estimated_bytes,
        )

    @app.post("/models/<path:name>/unload")
    def unload(name: str):
        name = model_name_arg(name)
        if not engine.unload(name):
            raise NotFound(f"{name} is not loaded")
        metrics.unloads.labels("unload").inc()
        return jsonify(model=name, unloaded=True)

    @app.delete("/models/<path:name>")
    def evict(name: str):
        name = model_name_arg(name)
        unloaded = engine.unload(name)
        deleted = cache.delete(name)
        kv_disk.remove(name)  # its saved prompt states go with the file (and an unload's)
        if not (deleted or unloaded):
            raise NotFound(f"{name} is not on this worker")
        if unloaded:
            metrics.unloads.labels("evict").inc()
        if deleted:
            metrics.evictions.inc()
        logger.info("evicted %s (file deleted=%s, unloaded=%s)", name, deleted, unloaded)
        return jsonify(model=name, deleted=deleted, unloaded=unloaded)

    @app.post("/infer")
    def infer():
        request.max_content_length = settings.max_request_bytes
        body = read_json_object(request)
        model = body.get("model")
        if model is not None:
            model = model_name_arg(model)
        if "embed" in body:
            return embed_response(engine, body, model)
        events = _stream_format(body) == "events"
        job = parse_job(body, settings, events=events)
        together = parse_together(request.headers.get(TOGETHER_HEADER))
        try:
            generation = engine.begin(model, job, together)
        except NotLoaded as err:
            raise Conflict(str(err)) from None
        except (PromptTooLong, ChatTemplateError, GrammarError, OutOfVocabulary) as err:
            raise BadRequest(str(err)) from None

        def stream():
            first = True
            try:
                if events and generation.tool_format is not None:
                    yield _event({"tool_format": generation.tool_format})
                for piece in generation.tokens():
                    if first:
                        metrics.queue_wait.observe(generation.queue_seconds)
                        metrics.ttft.observe(generation.ttft_seconds)
                        first = False
                    yield _event({"text": piece}) if events else piece
                if not events:
                    return
                yield _event(
                    {
                        "finish_reason": generation.finish_reason,
                        "usage": {
                            "prompt_tokens": generation.prompt_token_count,
                            "cached_tokens": generation.cached_tokens,
                            "completion_tokens": generation.completion_tokens,
                        },
                    }
                )
            finally:
                metrics.generations.labels(generation.model).inc()
                metrics.tokens.labels(generation.model).inc(generation.completion_tokens)
                generation.close()

        mimetype = "application/x-ndjson" if events else "text/plain"
        response = Response(stream(), mimetype=mimetype)
        response.headers["X-Model"] = generation.model
        response.headers["X-Accel-Buffering"] = "no"
        response.call_on_close(generation.close)
        return response

    @app.get("/status")
    def status():
        resident = [dataclasses.asdict(info) for info in engine.resident()]
        embedding_bytes = engine.embedding_bytes()
        for info in resident:  # an embedding context's memory counts with its model
            info["embedding_bytes"] = embedding_bytes.get(info["name"], 0)
            info["estimated_bytes"] += info["embedding_bytes"]
        return jsonify(
            loaded=engine.loaded,
            resident=resident,
            resident_bytes=sum(info["estimated_bytes"] for info in resident),
            cached=[{"name": f.name, "size": f.size, "digest": f.digest} for f in cache.files()],
            model_cache_dir=str(cache.directory),
            # The filesystem the cache is on: a store that sees the same directory on the
            # same filesystem places files there itself (reflink or kernel copy) instead of
            # pushing them.
            model_cache_dev=cache.directory.stat().st_dev,
            received={"uploads": cache.uploads, "bytes": cache.bytes_received},
            loads=engine.loads,
            last_generation=engine.last_generation,
            n_gpu_layers=settings.n_gpu_layers,
            n_ctx=settings.n_ctx,
            embedding_tokens=engine.embeddings.max_tokens,
            parallel=settings.parallel,
            prefix_cache=settings.prefix_cache,
            # KV sequences of N_CTX per resident model (the store's memory estimate).
            kv_streams=engine.kv_streams,
            # Host memory each resident model's prompt cache may hold (in estimated_bytes).
            kv_cache_bytes=engine.kv_cache_bytes,
            kv_disk=kv_disk.describe(),
            sequences_running=sum(info["generating"] for info in resident),
            queue_depth=sum(info["queued"] for info in resident),
            receiving=cache.transfers.describe(),  # uploads running now: bytes done and total
        )

    @app.get("/metrics")
    def metrics_endpoint():
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    @app.get("/health")  # what Kubernetes probes and load generators ask for
    def healthz():
        return jsonify(ok=True)

    @app.get("/ready")  # the front server's loop answers it first
    def ready():
        is_ready, details = app.extensions["readiness"]()
        return jsonify(ready=is_ready, **details), 200 if is_ready else 503

    return app
