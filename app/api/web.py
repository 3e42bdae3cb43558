"""The static web page: ``/`` serves ``web/index.html``, ``/web/<file>`` the rest of ``web/``."""

from __future__ import annotations

from pathlib import Path

from quart import Response, send_from_directory

from app.api.common import Family, service
from app.errors import NotFound

WEB_DIR = Path(__file__).resolve().parents[2] / "web"

web = Family("web", __name__)


@web.route("/", methods=["GET"])
@web.route("/index.html", methods=["GET"])
async def index() -> Response:
    settings = service().settings
    if not settings.webui:
        raise NotFound("the web page is off (--no-webui)")
    if not settings.api_prefix:
        return await send_from_directory(WEB_DIR, "index.html")
    # under --api-prefix the page's own files are there too (app.js finds the API from its URL)
    page = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    page = page.replace('"/web/', f'"{settings.api_prefix}/web/')
    return Response(page, content_type="text/html; charset=utf-8")


@web.route("/web/<path:name>", methods=["GET"])
async def asset(name: str) -> Response:
    if not service().settings.webui:
        raise NotFound("the web page is off (--no-webui)")
    # send_from_directory refuses names that leave the folder (404)
    return await send_from_directory(WEB_DIR, name)
