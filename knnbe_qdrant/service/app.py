"""`knnbe-qdrant serve`: one store, embedded or a Qdrant server, behind a versioned JSON API with scoped keys, a
curator web page, health and readiness probes and Prometheus metrics. The same library does the work underneath: a
SkillMapper (through the micro-batcher) and a Curator.

What a request may and may not do is decided here, from its key: the tenant comes from the key, never from the
request. Errors are JSON `{"error": message}`, never a stack trace.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._errors import InvalidInputError, KnnbeError
from .._mapper import SkillMapper
from .._process import own_process
from .._text import VISIBLE
from ..store.connection import Connection
from . import page, routes
from .gate import RequestGate
from .state import ApiError, Limits, Service, status_of

log = logging.getLogger("knnbe_qdrant.service")


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


class Measured:
    """Counts and times every HTTP request by endpoint, method and status (the Prometheus metrics). A plain ASGI
    middleware: Starlette's `@app.middleware("http")` runs each request in a task of its own behind memory streams,
    which cost more of the event loop's time than the map endpoint's own work around the batcher."""

    def __init__(self, app: ASGIApp, service: Service, routes: Callable[[], list[BaseRoute]] = list) -> None:
        self.app = app
        self.metrics = service.metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers for an exception that reaches it

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # The router sets the matched route in the request's scope, which is this one. A /v1 request the gate
            # answered never reached the router: its route is found here, so that it is counted under its endpoint.
            route = scope.get("route") or next(
                (r for r in self.routes() if r.matches(scope)[0] == Match.FULL), None)
            endpoint = getattr(route, "path", "unmatched")
            # The method as a label only when it is one of HTTP's: any token is a method to the server, and one
            # series per made-up method let a client grow the metrics (and this process) without bound.
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            self.metrics.requests.labels(endpoint, method, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            if status >= 400:
                self.metrics.errors.labels(endpoint, str(status)).inc()


def create_app(connection: Connection | None = None, *, mapper: SkillMapper | None = None,
               limits: Limits | None = None, cors_origins: tuple[str, ...] = (),
               load_in_background: bool = True) -> FastAPI:
    """The service over the store at `connection`, opened when the app starts; or over `mapper`, already open
    (the caller keeps and closes it)."""
    if (connection is None) == (mapper is None):
        raise InvalidInputError("serve either a connection or an open mapper")
    # The service owns its process (see _process). Here, not in the lifespan hook: OpenBLAS takes the setting from the
    # main thread only, and the hook may run in another (a test client's portal thread).
    own_process()
    service = Service(connection, limits or Limits(), mapper)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if load_in_background:
            threading.Thread(target=service.load, name="knnbe-load", daemon=True).start()
        else:
            service.load()
        yield
        service.close()

    app = FastAPI(title="knnbe-qdrant", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Map job-posting text to ESCO skills with kNNBE on Qdrant; curate the memory live.")
    app.state.service = service

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(KnnbeError)
    async def knnbe_error(request: Request, exc: KnnbeError) -> JSONResponse:
        return error(status_of(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            msg = e.get("msg", "invalid")
            if e.get("type") == "string_pattern_mismatch" and e.get("ctx", {}).get("pattern") == VISIBLE:
                msg = "empty once whitespace, control and format characters are taken out"
            problems.append(f"{where or 'body'}: {msg}")
        return error(422, "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only those of the first route that matched it
            response.headers["Allow"] = ", ".join(allowed(request.scope))
        return response

    def allowed(scope: Scope) -> list[str]:
        methods = ("GET", "POST", "PUT", "PATCH", "DELETE") + (() if scope["path"].startswith("/v1/") else ("HEAD",))
        return [m for m in methods
                if any(route.matches({**scope, "method": m})[0] == Match.FULL for route in app.router.routes)]

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(500, "internal error (details are in the service's log)")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        if service.draining:  # SIGTERM: a load balancer stops sending here while in-flight requests finish
            return error(503, "draining: shutting down after the requests in flight")
        if service.ready:
            return JSONResponse({"status": "ready", "seconds_to_ready": round(service.ready_after or 0.0, 3)})
        return error(503, service.failure or "starting")

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    v1 = routes.router(service)
    app.include_router(v1)
    page.mount(app)
    page.mount_docs(app)
    app.add_middleware(RequestGate, service=service)
    if cors_origins:  # outside the gate: preflights carry no key, and a browser reads the gate's errors too
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(Measured, service=service, routes=lambda: v1.routes)  # outermost: the gate's answers too
    app.openapi = lambda: openapi_with_limits(app, service.limits)  # type: ignore[method-assign]
    return app


def openapi_with_limits(app: FastAPI, limits: Limits) -> dict[str, Any]:
    """The OpenAPI document with this service's configured limits (--max-sentences, --max-chars) where the models
    carry the defaults, so that a generated client knows the bounds the service enforces."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        models = schema.get("components", {}).get("schemas", {})
        sentences = models.get("MapRequest", {}).get("properties", {}).get("sentences", {})
        sentences["maxItems"] = limits.max_sentences
        sentences.setdefault("items", {})["maxLength"] = limits.max_chars
        text = models.get("PostingRequest", {}).get("properties", {}).get("text", {})
        text["maxLength"] = limits.max_chars * limits.max_sentences
        app.openapi_schema = schema
    return app.openapi_schema
