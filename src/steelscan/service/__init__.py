"""The inspection service: FastAPI app, routers and the web page (start at :mod:`.app`)."""
