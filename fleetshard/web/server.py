"""What every dashboard server shares: the address, the access token, the security headers, binding.

* ``[HOST:]PORT``: HOST defaults to 127.0.0.1 (loopback); ``[::1]:8080`` for IPv6; port 0 picks a free one.
* On a loopback address the server answers only requests whose ``Host`` header names a loopback address
  (so a web page elsewhere cannot reach it through DNS rebinding). On any other address it requires a
  random token: ``?token=…`` in the URL printed at start (the server then sets it as a same-site cookie),
  and refuses every request without it (403).
* Read-only: GET and HEAD only (405 otherwise).
* Every response says ``Content-Security-Policy`` with no external source (the pages work offline),
  ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``, no framing, no caching.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from aiohttp import web

TOKEN_COOKIE = "fleetshard_token"
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# The HTML report (fleetshard.report) carries its own inline style and script.
REPORT_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
              "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def parse_address(text: str, *, option: str = "--serve") -> Address:
    """``[HOST:]PORT`` → Address; a UsageError (exit 2) naming the option when it is not one."""
    raw = text.strip()
    host = "127.0.0.1"
    port_text = raw
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0 or raw[end + 1:end + 2] != ":":
            raise UsageError(f"{option}: expected [HOST:]PORT such as 8080 or [::1]:8080, got {text!r}")
        host, port_text = raw[1:end], raw[end + 2:]
    elif ":" in raw:
        host, _, port_text = raw.rpartition(":")
        if ":" in host:
            raise UsageError(f"{option}: an IPv6 address goes in brackets, as in [::1]:8080 (got {text!r})")
        host = host or "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"{option}: expected [HOST:]PORT with a port from 0 to 65535, got {text!r}")
    return Address(host, int(port_text))


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(header: str) -> str:
    """The host part of a Host header (``127.0.0.1:8080``, ``[::1]:8080``, ``localhost``)."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def new_token() -> str:
    return secrets.token_urlsafe(18)


def asset(name: str) -> str:
    """A file of the page (script, style sheet) shipped in fleetshard/web/static/."""
    return (resources.files("fleetshard.web") / "static" / name).read_text(encoding="utf-8")


def guard(address: Address, token: str | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware that enforces the rules of this module's docstring."""
    from aiohttp import web

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return _refuse(web.Response(status=405, text="read-only: GET and HEAD only\n",
                                        headers={"Allow": "GET, HEAD"}))
        if address.loopback and not is_loopback(_host_of(request.host)):
            return _refuse(web.Response(status=421, text="this dashboard answers only to a loopback host name\n"))
        set_cookie = False
        if token is not None:
            given = request.query.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
            if not secrets.compare_digest(given.encode(), token.encode()):
                return _refuse(web.Response(status=403, text="missing or wrong token: open the URL printed "
                                            "by fleetshard, with its ?token=\n"))
            set_cookie = request.query.get("token") is not None
        response = await handler(request)
        if set_cookie and token is not None:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
        _secure(response)
        return response

    return middleware


def _secure(response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", PAGE_CSP)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"
    headers.setdefault("Cache-Control", "no-store")


def _refuse(response: web.Response) -> web.Response:
    _secure(response)
    return response


def html_response(body: str, *, csp: str = PAGE_CSP, status: int = 200) -> web.Response:
    from aiohttp import web

    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": csp})


def page_url(address: Address, port: int, token: str | None, path: str = "/") -> str:
    host = address.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}" + (f"?token={token}" if token else "")


@dataclass
class Served:
    """A running server: its URL and how to stop it."""

    runner: web.AppRunner
    url: str
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


async def serve_app(app: web.Application, address: Address, token: str | None) -> Served:
    """Bind ``app`` to ``address`` in the running event loop; a UsageError when the address cannot be used."""
    from aiohttp import web

    app.middlewares.append(guard(address, token))
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, address.host, address.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise UsageError(f"cannot serve the dashboard on {address.host}:{address.port}: "
                         f"{exc.strerror or exc}") from exc
    port = int(runner.addresses[0][1]) if runner.addresses else address.port
    return Served(runner, page_url(address, port, token), port)
