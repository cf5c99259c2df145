"""The API's routers, one module per concern: inspection, metadata, the web page."""

from steelscan.service.routes.inspect import router as inspect_router
from steelscan.service.routes.meta import router as meta_router
from steelscan.service.routes.page import router as page_router

ROUTERS = (inspect_router, meta_router, page_router)

__all__ = ["ROUTERS", "inspect_router", "meta_router", "page_router"]
