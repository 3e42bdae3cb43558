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
    if not service().settings.webui:
        raise NotFound("the web page is off (--no-webui)")
    return await send_from_directory(WEB_DIR, "index.html")


@web.route("/web/<path:name>", methods=["GET"])
async def asset(name: str) -> Response:
    if not service().settings.webui:
        raise NotFound("the web page is off (--no-webui)")
    # send_from_directory refuses names that leave the folder (404)
    return await send_from_directory(WEB_DIR, name)
