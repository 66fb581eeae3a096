"""The FastAPI app: OpenAI's routes over one engine, plus /health, /metrics and tokenizer routes.

`create_app(engine, tokenizer, model_id, settings)` builds it; `lmlab serve` runs it under
uvicorn. The tokenizer routes (/tokenizer_info, /tokenize, /detokenize, as vLLM serves them) let
lm-evaluation-harness's `local-completions` tokenize with this server's own tokenizer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from lmlab.serve.endpoints import Call, run_call
from lmlab.serve.errors import ApiError, bad_request, error_body
from lmlab.serve.metrics import Metrics
from lmlab.serve.params import encode_raw, prepare_chat, prepare_completion
from lmlab.serve.responses import Pieces
from lmlab.serve.scheduler import Scheduler
from lmlab.serve.schemas import ChatRequest, CompletionRequest, parse_body

log = logging.getLogger("lmlab.serve")
OPEN_PATHS = ("/health",)  # answered without the API key (liveness probes)
# Metric labels: these paths, everything else as "other" (a client must not grow the label set).
KNOWN_PATHS = (
    "/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics",
    "/tokenizer_info", "/tokenize", "/detokenize",
)  # fmt: skip


@dataclass
class Settings:
    api_key: str | None = None
    max_batch: int = 32
    max_queue: int = 256
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout: float = 600.0


@dataclass
class ServeState:
    engine: object
    tok: object
    model_id: str
    context: int
    settings: Settings
    metrics: Metrics
    scheduler: Scheduler
    pieces: Pieces
    created: int


class Guard:
    """Pure ASGI middleware (streams pass through untouched): the API key, the body size limit,
    and the requests-by-status counter."""

    def __init__(self, app, state: ServeState):
        self.app, self.state = app, state
        key = state.settings.api_key
        self._key_digest = hashlib.sha256(key.encode()).digest() if key else None

    def _authorized(self, scope) -> bool:
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        # Digests of equal length, compared in constant time: neither content nor length leaks.
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self._key_digest)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self._key_digest and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
                err = ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                               code="invalid_api_key")  # fmt: skip
                return await err.response()(scope, receive, send_counted)
            limit = self.state.settings.max_body_bytes
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                return await _too_large(limit).response()(scope, receive, send_counted)
            await self.app(scope, _capped(receive, limit), send_counted)
        finally:
            path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            self.state.metrics.requests.labels(path, str(status[0])).inc()


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body over the limit of {limit} bytes", code="body_too_large")


def _capped(receive, limit: int):
    """A receive that fails once a (chunked) body passes the limit."""
    seen = [0]

    async def wrapped():
        message = await receive()
        if message["type"] == "http.request":
            seen[0] += len(message.get("body", b""))
            if seen[0] > limit:
                raise _too_large(limit)
        return message

    return wrapped


async def _json(http: HttpRequest):
    raw = await http.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON ({e})") from None


def create_app(engine, tokenizer, model_id: str, settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    state = ServeState(
        engine=engine,
        tok=tokenizer,
        model_id=model_id,
        context=engine.model_cfg.seq_len,
        settings=settings,
        metrics=metrics,
        scheduler=Scheduler(engine, metrics, settings.max_batch, settings.max_queue),
        pieces=Pieces(tokenizer),
        created=int(time.time()),
    )

    @asynccontextmanager
    async def lifespan(_app):
        state.scheduler.start()
        yield
        state.scheduler.stop()

    app = FastAPI(title="lmlab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    app.add_middleware(Guard, state=state)
    _handlers(app)
    _routes(app, state)
    return app


def _handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, lambda _r, e: e.response())

    async def http_error(_r, e: HTTPException):
        type_ = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), type_), status_code=e.status_code)

    async def validation_error(_r, e: RequestValidationError):
        return JSONResponse(error_body("invalid request", "invalid_request_error"), 400)

    async def crash(_r, e: Exception):
        log.exception("unexpected error while answering a request")
        return JSONResponse(error_body("internal server error", "server_error"), 500)

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, crash)


def _routes(app: FastAPI, state: ServeState) -> None:
    def model_card() -> dict:
        return {
            "id": state.model_id,
            "object": "model",
            "created": state.created,
            "owned_by": "lmlab",
            "max_model_len": state.context,
        }

    def check_model(name: str | None) -> str:
        if name is not None and name != state.model_id:
            raise ApiError(
                404,
                f"model {name!r} is not served here (served: {state.model_id})",
                param="model",
                code="model_not_found",
            )
        return state.model_id

    @app.get("/health")
    async def health():
        s = state.scheduler
        return {"status": "ok", "model": state.model_id, "queue_depth": s.queue_depth,
                "running_rows": s.running_rows}  # fmt: skip

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        check_model(name)
        return model_card()

    @app.post("/v1/completions")
    async def completions(http: HttpRequest):
        req = parse_body(await _json(http), CompletionRequest)
        model_id = check_model(req.model)
        prepared = prepare_completion(req, state.tok, state.context)
        call = Call("text_completion", model_id, prepared, req.stream, req.include_usage)
        return await run_call(state, http, call)

    @app.post("/v1/chat/completions")
    async def chat(http: HttpRequest):
        req = parse_body(await _json(http), ChatRequest)
        model_id = check_model(req.model)
        prepared = [prepare_chat(req, state.tok, state.context)]
        call = Call("chat.completion", model_id, prepared, req.stream, req.include_usage)
        return await run_call(state, http, call)

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        from lmlab.text.base import literal

        return {"tokenizer_class": type(state.tok).__name__, "bos_token": literal("bos"),
                "eos_token": literal("eot"), "pad_token": None,
                "model_max_length": state.context}  # fmt: skip

    @app.post("/tokenize")
    async def tokenize(http: HttpRequest):
        body = await _json(http)
        text = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise bad_request("prompt must be a string", param="prompt")
        ids = encode_raw(state.tok, text, add_bos=bool(body.get("add_special_tokens", True)))
        return {"tokens": ids, "count": len(ids), "max_model_len": state.context}

    @app.post("/detokenize")
    async def detokenize(http: HttpRequest):
        body = await _json(http)
        ids = body.get("tokens") if isinstance(body, dict) else None
        vocab = state.tok.vocab_size
        if not isinstance(ids, list) or not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
            raise bad_request(f"tokens must be a list of ids in [0, {vocab})", param="tokens")
        return {"prompt": state.tok.decode(ids)}
