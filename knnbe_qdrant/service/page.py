"""The curator web page: server-rendered HTML and a little JavaScript over the same JSON API, no build step. The key
is kept in the tab's sessionStorage and sent as a bearer token; the page has no powers of its own."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# Scripts and styles from this origin only: no inline script, nothing fetched from elsewhere.
CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def mount(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP,
                                                            "X-Content-Type-Options": "nosniff",
                                                            "Referrer-Policy": "no-referrer"})


def mount_docs(app: FastAPI) -> None:
    """/docs: Swagger UI from this origin (the files fastapi-offline ships), not from a CDN, under a CSP that lets
    only those files and the page's one inline script (by its hash) run. Without the package: no /docs page;
    /openapi.json, the contract, is always served."""
    try:
        import fastapi_offline
    except ImportError:
        return
    app.mount("/docs-static", StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"),
              name="docs-static")
    page = get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
                               swagger_js_url="/docs-static/swagger-ui-bundle.js",
                               swagger_css_url="/docs-static/swagger-ui.css",
                               swagger_favicon_url="/docs-static/favicon.png")
    html = bytes(page.body).decode()
    inline = re.search(r"<script>(.*?)</script>", html, re.S)
    digest = base64.b64encode(hashlib.sha256(inline.group(1).encode()).digest()).decode() if inline else ""
    csp = (f"default-src 'none'; script-src 'self' 'sha256-{digest}'; style-src 'self' 'unsafe-inline'; "
           "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

    @app.api_route("/docs", methods=["GET", "HEAD"], include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(html, headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
                                           "Referrer-Policy": "no-referrer"})
