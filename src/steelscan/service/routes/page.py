"""The web page (``/`` and ``/static``) and the API docs (``/docs``), both usable offline.

FastAPI's default /docs loads Swagger UI from a CDN, which a plant network or an air-gapped
inspection PC cannot reach, so its files are served from the fastapi-offline package when it is
installed; without the package the app keeps FastAPI's default page.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
DOCS_ASSETS_URL = "/docs-assets"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def mount_static(app: FastAPI) -> None:
    """The page's scripts and styles (mounts are app-level: routers do not carry them)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def docs_assets() -> Path | None:
    """Swagger UI's files from fastapi-offline, or None (then FastAPI's CDN page is used)."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    static = Path(fastapi_offline.__file__).parent / "static"
    return static if (static / "swagger-ui-bundle.js").is_file() else None


def add_offline_docs(app: FastAPI, assets: Path) -> None:
    """Serve /docs with Swagger UI from ``assets`` (build the app with ``docs_url=None``)."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
        )
