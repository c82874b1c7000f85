"""The HTTP routes of the ME-DLM server, written once for the two deployments that can face clients.

The thin ingress (:mod:`pipeline.serve.ingress`, the default) and a model replica serving HTTP itself
(``ingress: false``) answer the same routes with the same bodies and errors; only the backend behind
them differs. A backend is the replica's own deployment object (found through Serve's replica
context) with three coroutines:

    info()              -> dict: model name, checkpoint hash, limits, the model replica that answered
    reply(route, req)   -> the reply dict, or the ApiError refusing the request
    events(route, req)  -> async iterator: ACCEPTED or an ApiError first, then SSE lines

``route`` is ``"refine"``, ``"chat"`` or ``"completions"``. A stream's first item arrives once the
request passed its checks, so bad input is still a plain 4xx JSON reply, never an event.

A request without a seed gets one here, on arrival: a retry on another replica then decodes the same
text, and the reply's ``budget.seed`` says which seed it was.
"""

# No ``from __future__ import annotations``: FastAPI must see the route annotations as classes.
import importlib.resources
import logging
import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.serve.api import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    RefineRequest,
    describe_validation_errors,
)
from pipeline.serve.batching import ACCEPTED, SSE_HEADERS

logger = logging.getLogger("ray.serve")

ASSIGNED_SEEDS = 2**31  # seeds given on arrival are drawn below this (any seed up to MAX_SEED is accepted)


def playground_html() -> str:
    """The playground page, shipped as package data (one file, no external resources)."""
    return importlib.resources.files("pipeline.serve").joinpath("playground.html").read_text(encoding="utf-8")


def _backend():
    return serve.get_replica_context().servable_object


def with_seed(req):
    """The request with a seed: its own, or one drawn now (so every try decodes the same text)."""
    return req if req.seed is not None else req.model_copy(update={"seed": secrets.randbelow(ASSIGNED_SEEDS)})


async def answer(route: str, req):
    """A reply, or a stream whose first event the backend has confirmed (bad input raises an ApiError)."""
    req = with_seed(req)
    backend = _backend()
    if not req.stream:
        out = await backend.reply(route, req)
        if isinstance(out, ApiError):
            raise out
        return out
    events = backend.events(route, req).__aiter__()
    first = await events.__anext__()
    if isinstance(first, ApiError):
        await events.aclose()
        raise first
    assert first == ACCEPTED, first
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


def make_api() -> FastAPI:
    api = FastAPI(title="ME-DLM refinement server", docs_url="/docs", redoc_url=None)
    page = playground_html()

    # ------------------------------------------------------------ errors: always JSON, never a crash

    @api.exception_handler(RequestValidationError)
    async def _on_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = describe_validation_errors(exc.errors())
        return JSONResponse(err.body(), status_code=err.status)

    @api.exception_handler(ApiError)
    async def _on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @api.exception_handler(StarletteHTTPException)
    async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(ApiError(exc.status_code, message, None, code).body(), status_code=exc.status_code)

    @api.exception_handler(Exception)
    async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        err = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", None, "internal_error")
        return JSONResponse(err.body(), status_code=500)

    # ------------------------------------------------------------ routes

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground_page() -> HTMLResponse:
        return HTMLResponse(page)

    @api.get("/health")
    async def health() -> dict:
        info = await _backend().info()
        return {"status": "ok", "model": info["model"], "checkpoint_hash": info["checkpoint_hash"],
                "replica": info["replica"]}

    @api.get("/v1/models")
    async def models() -> dict:
        info = await _backend().info()
        return {"object": "list", "data": [{
            "id": info["model"], "object": "model", "created": info["created"], "owned_by": "medlm",
            "checkpoint_hash": info["checkpoint_hash"], "max_batch_size": info["max_batch_size"],
            "limits": info["limits"],
        }]}

    @api.post("/v1/refine")
    async def refine(req: RefineRequest):
        return await answer("refine", req)

    @api.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest):
        return await answer("chat", req)

    @api.post("/v1/completions")
    async def completions(req: CompletionRequest):
        return await answer("completions", req)

    return api
