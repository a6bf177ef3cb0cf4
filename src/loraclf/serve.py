"""`loraclf serve RUN_OR_EXPORT`: an HTTP JSON API (FastAPI on uvicorn) over a run directory, a --merged export
or an --onnx export.

  POST /predict  {"texts": ["...", ...]} -> {"labels": [ids], "names": [class names], "probabilities": [[...], ...]}
                 (a model trained on sentence pairs takes {"texts": [["text a", "text b"], ...]})
                 (a multi-label model: {"labels": [[ids], ...], "names": [[names], ...]}, sigmoid probabilities)
  GET  /health   {"status": "ok"}
  GET  /info     model, source, labels, budget, metrics, limits, batching statistics

Requests are micro-batched across clients: one worker thread owns the model; it takes every request waiting,
waits up to --max-wait-ms for more (until --max-batch texts), runs one length-sorted pass, and answers each
request with its own rows. Limits: more than --max-texts texts, a text over --max-chars characters or a body over
--max-body-bytes give 413; a body that is not JSON or not {"texts": [strings]} gives 422, as does JSON nested
too deeply, an integer over 4,300 digits, a repeated key or a text with a lone surrogate; every error body is
JSON {"error": "..."}. A failing forward pass answers 500 to the requests of that batch only; the server goes on.
SIGTERM (or Ctrl+C): stop accepting connections, finish the requests in flight, exit 0.
"""
import asyncio
import concurrent.futures
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import untrusted
from .errors import UserError

if TYPE_CHECKING:
    from .scoring import Predictor
# no `from __future__ import annotations` here: FastAPI reads the endpoints' annotations (Request) at runtime

DEFAULTS = dict(max_texts=64, max_chars=10_000, max_batch=64, max_wait_ms=2.0)
MAX_THREADS = 1024


# ------------------------------------------------------------------------------------------ models

# ------------------------------------------------------------------------------------------ batching

@dataclass
class _Job:
    texts: list[str]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class Batcher:
    """One worker thread runs every forward pass; requests that arrive while it is busy share the next one."""

    def __init__(self, logits_fn, max_batch: int = 64, max_wait_ms: float = 2.0):
        self.logits_fn, self.max_batch, self.max_wait = logits_fn, max_batch, max_wait_ms / 1000
        self.queue: queue.Queue = queue.Queue()
        self.stats = {"requests": 0, "texts": 0, "batches": 0, "errors": 0, "largest_batch": 0}
        self._thread = threading.Thread(target=self._loop, name="loraclf-batcher", daemon=True)
        self._thread.start()

    def submit(self, texts: list[str]) -> concurrent.futures.Future:
        job = _Job(texts)
        self.queue.put(job)
        return job.future

    def close(self, timeout: float = 30) -> None:
        self.queue.put(None)
        self._thread.join(timeout)

    def _take(self) -> tuple[list[_Job], bool]:
        first = self.queue.get()
        if first is None:
            return [], True
        jobs, n = [first], len(first.texts)
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch:
            try:  # whatever is already waiting, then up to max_wait for more
                job = self.queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = self.queue.get(timeout=left)
                except queue.Empty:
                    break
            if job is None:
                return jobs, True
            jobs.append(job)
            n += len(job.texts)
        return jobs, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            jobs, stop = self._take()
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            texts = [t for j in jobs for t in j.texts]
            try:
                logits = np.asarray(self.logits_fn(texts), dtype=np.float32)
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the others in its batch
                if len(jobs) == 1:
                    self.stats["errors"] += 1
                    jobs[0].future.set_exception(e)
                else:
                    for j in jobs:
                        self._one(j)
                continue
            self.stats["requests"] += len(jobs)
            self.stats["texts"] += len(texts)
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(texts))
            start = 0
            for j in jobs:
                j.future.set_result(logits[start: start + len(j.texts)])
                start += len(j.texts)

    def _one(self, job: _Job) -> None:
        """Run one request alone (after its batch failed): its own answer or its own error."""
        try:
            logits = np.asarray(self.logits_fn(job.texts), dtype=np.float32)
        except Exception as e:  # noqa: BLE001 - the request gets a 500; the server goes on
            self.stats["errors"] += 1
            job.future.set_exception(e)
            return
        self.stats["requests"] += 1
        self.stats["texts"] += len(job.texts)
        self.stats["batches"] += 1
        job.future.set_result(logits)


# ------------------------------------------------------------------------------------------ app

class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def parse_request(body: bytes, max_texts: int, max_chars: int, pairs: bool = False) -> list:
    """{"texts": [str, ...]} -> the texts; with `pairs`, {"texts": [[str, str], ...]} -> (a, b) tuples;
    RequestError(413/422) otherwise. max_chars holds for each text of a pair."""
    try:
        data = untrusted.loads(body)
    except untrusted.JSONError as e:  # also JSON nested too deeply, a 5,000-digit number, a repeated key
        lead = "the request body is " if e.message.startswith("not valid JSON") else "the request body is refused: "
        raise RequestError(422, lead + e.message) from None
    if not isinstance(data, dict) or "texts" not in data:
        raise RequestError(422, 'the request body must be a JSON object {"texts": ["...", ...]}')
    texts = data["texts"]
    if not isinstance(texts, list):
        raise RequestError(422, f'"texts" must be a list of strings, not {_json_type(texts)}')
    if not texts:
        raise RequestError(422, '"texts" is empty: give at least one text')
    if len(texts) > max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; the limit is {max_texts}: split the request")
    if pairs:
        for i, t in enumerate(texts):
            if not (isinstance(t, list) and len(t) == 2):
                raise RequestError(422, f'"texts"[{i}] is {_json_type(t)}{f" of {len(t)}" if isinstance(t, list) else ""}, '
                                        'not a pair ["text a", "text b"]: this model scores sentence pairs')
            for j, part in enumerate(t):
                _check_text(part, f'"texts"[{i}][{j}]', max_chars)
        return [tuple(t) for t in texts]
    for i, t in enumerate(texts):
        if isinstance(t, list):
            raise RequestError(422, f'"texts"[{i}] is a list, not a string: this model scores one text per row')
        _check_text(t, f'"texts"[{i}]', max_chars)
    return texts


def _check_text(t, where: str, max_chars: int) -> None:
    if not isinstance(t, str):
        raise RequestError(422, f'{where} is {_json_type(t)}, not a string')
    if len(t) > max_chars:
        raise RequestError(413, f'{where} has {len(t)} characters; the limit is {max_chars}')
    if untrusted.unicode_problem(t):
        raise RequestError(422, f'{where} is not valid Unicode (a lone surrogate escape)')


def _json_type(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def create_app(predictor: "Predictor", max_texts: int = DEFAULTS["max_texts"], max_chars: int = DEFAULTS["max_chars"],
               max_batch: int = DEFAULTS["max_batch"], max_wait_ms: float = DEFAULTS["max_wait_ms"],
               max_body_bytes: int | None = None):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from . import multilabel
    from .scoring import softmax

    # JSON escapes cost up to 6 bytes a character (12 for a surrogate pair); leave room for that and the wrapper
    pairs = getattr(predictor, "pairs", False)
    max_body = max_body_bytes or max_texts * (max_chars * 6 + 16) * (2 if pairs else 1) + 4096
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app):
        state["batcher"] = Batcher(predictor.logits, max_batch=max_batch, max_wait_ms=max_wait_ms)
        state["started"] = time.time()
        try:
            yield
        finally:  # runs after uvicorn has finished the requests in flight
            state["batcher"].close()

    app = FastAPI(title="loraclf", lifespan=lifespan, docs_url="/docs", redoc_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return error(422, "invalid request: " + "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.exception_handler(Exception)
    async def internal_error(request, exc):
        return error(500, f"internal error: {type(exc).__name__}")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        return predictor.info | {
            "labels": predictor.labels,
            "limits": {"max_texts": max_texts, "max_chars": max_chars, "max_body_bytes": max_body},
            "batching": {"max_batch": max_batch, "max_wait_ms": max_wait_ms} | state["batcher"].stats,
            "uptime_s": round(time.time() - state["started"], 1)}

    @app.post("/predict")
    async def predict(request: Request):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            return error(413, f"request body of {int(length)} bytes; the limit is {max_body}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                return error(413, f"request body over {max_body} bytes")
            chunks.append(chunk)
        try:
            texts = parse_request(b"".join(chunks), max_texts, max_chars, pairs)
        except RequestError as e:
            return error(e.status, e.message)
        try:
            logits = await asyncio.wrap_future(state["batcher"].submit(texts))
        except Exception as e:  # noqa: BLE001 - a failed forward pass answers 500, the server goes on
            return error(500, f"prediction failed: {type(e).__name__}: {str(e)[:200]}")
        if predictor.thresholds is not None:  # a multi-label model: label sets, sigmoid probabilities
            return multilabel.response(logits, predictor.labels, predictor.thresholds)
        probs = softmax(logits)
        ids = logits.argmax(-1).tolist()
        return {"labels": ids, "names": [predictor.labels[i] for i in ids],
                "probabilities": probs.astype(float).tolist()}

    return app


# ------------------------------------------------------------------------------------------ CLI

def serve(path, host: str = "127.0.0.1", port: int = 8000, max_texts: int = DEFAULTS["max_texts"],
          max_chars: int = DEFAULTS["max_chars"], max_batch: int = DEFAULTS["max_batch"],
          max_wait_ms: float = DEFAULTS["max_wait_ms"], max_body_bytes: int | None = None, batch_size: int = 64,
          precision: str = "auto", drain_timeout: float = 30, access_log: bool = False, threads: int = 0,
          log=print) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UserError("serving needs fastapi and uvicorn", "pip install 'loraclf[serve]'") from None
    for name, v, hi in (("--max-texts", max_texts, 2**20), ("--max-chars", max_chars, 2**30),
                        ("--max-batch", max_batch, 2**20), ("--batch-size", batch_size, 2**20),
                        ("--max-body-bytes", 1 if max_body_bytes is None else max_body_bytes, 2**40)):
        if not 1 <= v <= hi:
            raise UserError(f"{name} must be between 1 and {hi:,}, not {v}", f"give {name} 1 to {hi:,}")
    # a wait past what the batcher's queue timeout can hold (1e300 ms) would kill its thread and hang every request
    for name, v, hi in (("--max-wait-ms", max_wait_ms, 60_000), ("--drain-timeout", drain_timeout, 86_400)):
        if not (0 <= v <= hi):  # NaN fails this too
            raise UserError(f"{name} must be a number from 0 to {hi:,}, not {v}", f"give {name} 0 to {hi:,}")
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a port number", "give a port between 1 and 65535")
    port = _check_port(host, port)  # --port 0: the free port the system chose, announced below
    if not 0 <= threads <= MAX_THREADS:
        raise UserError(f"--threads must be 0 (the library default) to {MAX_THREADS}, not {threads}",
                        f"give --threads 1 to {os.cpu_count() or 1} (this machine's CPUs)")
    from . import scoring
    # a run directory (adapter merged on load), a --merged, --onnx or --openvino export, each on its own backend,
    # loaded now so that a broken model fails before the server listens
    predictor = scoring.load_predictor(path, "auto", batch_size, precision, threads).load()
    app = create_app(predictor, max_texts, max_chars, max_batch, max_wait_ms, max_body_bytes)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=access_log,
                            timeout_graceful_shutdown=drain_timeout, lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler that was there before it
    # started; a no-op SIGTERM handler makes that graceful stop end in exit code 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if threading.current_thread() is threading.main_thread() else None
    log(f"serving {predictor.info['kind']} {path} ({predictor.info['backend']}, {len(predictor.labels)} classes) "
        f"on http://{host}:{port}  (POST /predict, GET /health, GET /info; Ctrl+C to stop)", flush=True)
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits 1 when it cannot bind (the port was taken meanwhile)
        raise UserError(f"could not serve on {host}:{port} (uvicorn exited with {e.code})",
                        "the port may be in use: choose another --port") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise UserError(f"could not listen on {host}:{port}", "the port may be in use: choose another --port")
    log("server stopped", flush=True)
    return 0


def _check_port(host: str, port: int) -> int:
    """The port to listen on, checked by binding it once (0: a free one the system picks)."""
    import socket
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: {e.strerror}", "give an address of this machine, e.g. 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror})",
                            "the port is in use or not allowed: choose another --port") from None
        return s.getsockname()[1]
