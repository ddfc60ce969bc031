"""The web page: `GET /` and its assets under `/ui/` (plain files inside the package, no
build step). The page holds no secret and reads nothing by itself: it asks for an API key when
the server has keys and sends it with every API call, so these routes are open (`OPEN_PATHS`).

Every answer carries a Content-Security-Policy that allows only the page's own scripts and
styles and no inline script, so even a rendering bug could not run text from a conversation."""

from __future__ import annotations

import functools
import re
from importlib import resources

from aiohttp import web

from threadloom.server.errors import ApiError

_ASSET = re.compile(r"[a-z][a-z0-9-]{0,63}\.(?:js|css|svg)")
_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml", "html": "text/html"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.cache
def _read(name: str) -> bytes | None:
    try:
        return (resources.files("threadloom.server") / "static" / name).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _file(name: str) -> web.Response:
    body = _read(name)
    if body is None:
        raise ApiError(404, f"no file {name!r}", param="name", code="not_found")
    kind = _TYPES[name.rsplit(".", 1)[1]]
    return web.Response(body=body, content_type=kind, charset="utf-8", headers=SECURITY_HEADERS)


async def index(request: web.Request) -> web.Response:
    return _file("index.html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not _ASSET.fullmatch(name):
        raise ApiError(404, f"no file {name!r}", param="name", code="not_found")
    return _file(name)


def setup(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/ui/{name}", asset)
