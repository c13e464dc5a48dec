"""The HTTP API (FastAPI): a thin layer over one :class:`~dreamrec.serve.recommender.Recommender`.

Endpoints: ``POST /recommend``, ``POST /recommend/batch``, ``GET /items/{item_id}``,
``GET /health``, ``GET /metrics`` (Prometheus text) and the OpenAPI docs (``/docs``,
``/openapi.json``).

Limits and bad input (never a 5xx):

* request bodies over ``max_body_bytes`` (default 1 MB) get 413 before they are parsed;
* an undecodable body (invalid UTF-8) gets 400;
* malformed JSON, wrong types, ``k < 1`` or ``k > MAX_K``, more than ``MAX_BATCH`` histories,
  and an intent for a model without intent support get 422; unknown ids with ``strict=true`` get 404
  (the request is well formed, the items it names are not in the catalog);
* the OpenAPI schema is the served model's: a model without intents has no intent to give (only
  null), and an intent-aware model's batch takes each history with its own intent
  (``{"history": [...], "intent": "..."}``), so every schema-valid request is answered;
* ``k`` and integer ids must be JSON Schema integers (``5`` or ``5.0``; ``true``, ``"5"`` and ``5.5``
  are 422 for ``k``, as the Python API rejects a boolean ``k``) and ``exclude_seen``/``strict`` JSON
  booleans (``0`` is 422); any JSON string is accepted, even a
  lone surrogate such as ``"\\ud800"``;
* a method a path does not serve gets 405 with an ``Allow`` header; every GET route answers HEAD;
* unknown ids (``strict=false``, the default) are ignored and listed in ``unknown``;
* an empty history gets the model's no-context answer (see ``Recommender``);
* histories longer than the model's window are truncated to their most recent items
  (``truncated: true``), never rejected; ``k`` above the catalog size returns the whole catalog.
"""
from __future__ import annotations

import json
import os
import time
from typing import Annotated, Any, Optional, Union

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dreamrec import __version__
from dreamrec.serve.async_batch import RequestBatcher
from dreamrec.serve.metrics import ServerMetrics
from dreamrec.serve.recommender import Recommender, RequestError, UnknownItemsError

MAX_K = 1000  # items per response
MAX_BATCH = 256  # histories per /recommend/batch request
DEFAULT_MAX_BODY_BYTES = 1_000_000


def _json_integer(v: Any) -> Any:
    """A JSON Schema integer: an int, or a float with no fraction (``3.0``); never a boolean or a string."""
    if isinstance(v, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError(f"expected an integer, got {v!r}")
        return int(v)
    if not isinstance(v, int):
        raise ValueError(f"expected an integer, got {type(v).__name__}")
    return v


JsonInt = Annotated[int, BeforeValidator(_json_integer)]
ItemId = Union[JsonInt, StrictStr]


class SafeJSONResponse(JSONResponse):
    """JSON with ASCII escapes, so any string a client sent (even a lone surrogate) can be echoed."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Body):
    history: list[ItemId] = Field(
        default_factory=list,
        description="Original item ids, oldest first. Empty: the model's no-context answer. "
        "Longer than the model's window: only the most recent items are used.",
    )
    k: JsonInt = Field(20, ge=1, le=MAX_K, description="Number of items; capped at the catalog size.")
    intent: Optional[str] = Field(None, description="Intention text (intent-aware models only).")
    exclude_seen: StrictBool = Field(False, description="Never return items of the history.")
    strict: StrictBool = Field(False, description="404 on unknown item ids instead of ignoring them.")


class RecommendRequestNoIntent(RecommendRequest):
    """The request of a model that takes no intent (its OpenAPI schema says so: only null)."""

    intent: None = Field(None, description="This model takes no intent: leave it out or null.")


class BatchRequest(_Body):
    histories: list[list[ItemId]] = Field(..., max_length=MAX_BATCH, description=f"Up to {MAX_BATCH} histories.")
    k: JsonInt = Field(20, ge=1, le=MAX_K)
    exclude_seen: StrictBool = False
    strict: StrictBool = False

    def split(self) -> tuple[list[list[Any]], list[str | None] | None]:
        return self.histories, None


class HistoryWithIntent(_Body):
    history: list[ItemId] = Field(default_factory=list, description="Original item ids, oldest first.")
    intent: Optional[str] = Field(None, description="Intention text for this history.")


class IntentBatchRequest(BatchRequest):
    """The batch request of an intent-aware model: each history a list of ids, or an object with its intent."""

    histories: list[Union[list[ItemId], HistoryWithIntent]] = Field(  # type: ignore[assignment]
        ..., max_length=MAX_BATCH,
        description=f"Up to {MAX_BATCH} histories, each a list of ids or {{history, intent}}.")

    def split(self) -> tuple[list[list[Any]], list[str | None] | None]:
        hs = [h.history if isinstance(h, HistoryWithIntent) else h for h in self.histories]
        ts = [h.intent if isinstance(h, HistoryWithIntent) else None for h in self.histories]
        return hs, ts


class RecommendResponse(BaseModel):
    items: list[ItemId]
    scores: list[float]
    unknown: list[ItemId] = Field(description="History ids not in the catalog (ignored).")
    truncated: bool = Field(description="The history was longer than the model's window.")
    fallback: Optional[str] = Field(
        None, description="'popularity': no known item in the history and the model learned no answer for an "
        "empty one, so the training popularity ranking was returned.")


class BatchResponse(BaseModel):
    results: list[RecommendResponse]


class Health(BaseModel):
    status: str
    model: str
    n_items: int
    max_len: int
    supports_intent: bool
    version: str
    worker: int = Field(description="process id of the worker that answered (several with serve --workers N)")


class ErrorResponse(BaseModel):
    detail: Any


class ServingLayer:
    """Pure ASGI middleware: body-size limit (413 before parsing), request metrics, and HEAD
    (RFC 9110 9.3.2): served as GET with the same headers and no body, so every GET route answers it."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        method = scope.get("method", "")
        head = method == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}
        try:
            body = await self._read_body(scope, receive)
            if body is None:
                status = 413
                await _send_413(send, self.max_body_bytes)
                return

            async def replay() -> Message:
                nonlocal body
                if body is not None:
                    chunk, body = body, None
                    return {"type": "http.request", "body": chunk, "more_body": False}
                return await receive()

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                elif head and message["type"] == "http.response.body":
                    message = {**message, "body": b""}
                await send(message)

            await self.app(scope, replay, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.observe(method, route, status, time.perf_counter() - start)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None if it is (or announces to be) larger than the limit."""
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        return None
                except ValueError:
                    pass
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


async def _send_413(send: Send, limit: int) -> None:
    body = json.dumps({"detail": f"request body larger than {limit} bytes"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """The methods of every route whose path matches the request's (HEAD wherever GET is served)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**scope, "method": ""})  # no route serves "": a path match is PARTIAL
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _error(status: int, detail: Any, **extra: Any) -> SafeJSONResponse:
    return SafeJSONResponse({"detail": detail, **extra}, status_code=status)


def create_app(recommender: Recommender, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app serving ``recommender`` (build it in-process for tests; ``dreamrec serve`` runs it)."""
    metrics = ServerMetrics()
    app = FastAPI(
        title="dreamrec",
        version=__version__,
        description=__doc__,
        default_response_class=SafeJSONResponse,
    )
    app.state.recommender = recommender
    app.state.metrics = metrics
    bad = {400: {"model": ErrorResponse, "description": "Body is not decodable (e.g. invalid UTF-8)"},
           422: {"model": ErrorResponse, "description": "Invalid request"},
           413: {"model": ErrorResponse, "description": "Body too large"},
           404: {"model": ErrorResponse, "description": "strict=true and a history id is not in the catalog"}}

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> SafeJSONResponse:
        if isinstance(exc, UnknownItemsError):  # the request is well formed; the items it names do not exist
            return _error(404, str(exc), unknown=exc.unknown)
        return _error(422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> SafeJSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()[:20]]
        for e in errors:
            if e["type"] == "none_required" and e["loc"][-1:] == ["intent"]:
                e["msg"] = (f"model {recommender.model_name!r} does not take an intent; leave 'intent' out "
                            "or serve an intent-aware model")
        return _error(422, errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> SafeJSONResponse:
        response = _error(exc.status_code, exc.detail)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        if exc.status_code == 405:  # RFC 9110 15.5.6: list every method the path serves
            response.headers["Allow"] = ", ".join(_allowed_methods(app, request.scope))
        return response

    # the request schemas say what this model takes: an intent field only where the model uses one
    one_body = RecommendRequest if recommender.supports_intent else RecommendRequestNoIntent
    batch_body = IntentBatchRequest if recommender.supports_intent else BatchRequest

    batcher = RequestBatcher(recommender)

    async def recommend(req: RecommendRequest) -> dict[str, Any]:
        """Top-k items (original ids) with scores for one history."""
        return await batcher.submit(req)  # concurrent requests share one model call (serve.async_batch)

    def recommend_batch(req: BatchRequest) -> dict[str, Any]:
        """Top-k items for up to MAX_BATCH histories in one model call."""
        histories, intents = req.split()
        rs = recommender.recommend_batch(histories, k=req.k, intents=intents, exclude_seen=req.exclude_seen,
                                         strict=req.strict)
        return {"results": [r.to_dict() for r in rs]}

    recommend.__annotations__["req"] = one_body  # FastAPI reads the body model from the annotation
    recommend_batch.__annotations__["req"] = batch_body
    app.post("/recommend", response_model=RecommendResponse, responses=bad)(recommend)
    app.post("/recommend/batch", response_model=BatchResponse, responses=bad)(recommend_batch)

    @app.get("/items/{item_id}", responses={404: {"model": ErrorResponse, "description": "Unknown item"}})
    def item(item_id: str) -> dict[str, Any]:
        """The catalog row of an item: its original id and metadata (title, text, ... where known)."""
        row = recommender.item(item_id)
        if row is None:
            raise HTTPException(404, f"unknown item id {item_id!r}")
        return row

    @app.get("/health", response_model=Health)
    def health() -> dict[str, Any]:
        """Liveness and what is served."""
        return {"status": "ok", "model": recommender.model_name, "n_items": recommender.n_items,
                "max_len": recommender.max_len, "supports_intent": recommender.supports_intent,
                "version": __version__, "worker": os.getpid()}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        """Prometheus text format: request counts, latency histogram, errors."""
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(ServingLayer, metrics=metrics, max_body_bytes=max_body_bytes)
    return app


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` (multi-worker serving): reads ``DREAMREC_RUN_DIR``
    and optionally ``DREAMREC_MAX_BODY_BYTES``, ``DREAMREC_INDEX`` (exact/faiss), ``DREAMREC_THREADS``,
    ``DREAMREC_SAMPLER``, ``DREAMREC_STEPS``, ``DREAMREC_NEW_ITEM_OFFSET`` and ``DREAMREC_SAMPLER_OPTIONS`` (a JSON object of further
    ``set_sampler`` options, e.g. ``{"correction_scale": 8}``)."""

    from dreamrec.threads import set_threads

    # DREAMREC_THREADS when given, else one thread per worker within its share of the cores (dreamrec.threads)
    set_threads(None, "serve", processes=int(os.environ.get("DREAMREC_WORKERS", "1")))
    steps = os.environ.get("DREAMREC_STEPS")
    rec = Recommender.load(
        os.environ["DREAMREC_RUN_DIR"],
        index=os.environ.get("DREAMREC_INDEX", "exact"),
        sampler=os.environ.get("DREAMREC_SAMPLER") or None,
        steps=int(steps) if steps else None,
        sampler_options=json.loads(os.environ.get("DREAMREC_SAMPLER_OPTIONS") or "{}"),
        new_item_offset=float(offset) if (offset := os.environ.get("DREAMREC_NEW_ITEM_OFFSET")) else None,
    )
    return create_app(rec, max_body_bytes=int(os.environ.get("DREAMREC_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)))
