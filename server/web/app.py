"""The web console's HTTP server (SPEC §8): aiohttp on the same event loop as asyncssh.

`WebConsole` is a lifecycle object like the SFTP side's: its parts are built
up front, `start()` binds the port, `stop()` closes it. Every response carries
the security headers; every POST needs the session's CSRF token; a page of a
district the session may not see is a 404, exactly like a page that does not
exist. Pages read and decide through processing's service functions
(processing/console.py, processing/held_runs.py); nothing here writes SQL, and
nothing here imports the SFTP modules.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from processing import held_runs
from processing.config import Config
from processing.model import RunRecord
from processing.runner import Runner, RunOutcome
from processing.store import Store
from server.accounts import BanList
from server.web.sessions import Session, Sessions

log = logging.getLogger("eams.web")

COOKIE = "eams_session"
LOGIN_COOKIE = "eams_login"  # double-submit CSRF token of the sign-in form
HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebConsole:
    """The console's server: built from the server's parts, started and stopped with it."""

    def __init__(
        self,
        config: Callable[[], Config],
        store: Store,
        runner: Runner,
        bans: Callable[[], BanList],
        *,
        execute: Callable[[RunRecord], Awaitable[RunOutcome]] | None = None,
        port: int | None = None,
        extra_routes: Callable[[web.Application], None] | None = None,
    ) -> None:
        self.config = config  # read per request: a SIGHUP applies at once
        self.store = store
        self.runner = runner
        self.bans = bans
        self.execute = execute or runner.run  # an approved run: the server's queue runs it
        self.sessions = Sessions(lambda: self._settings().session_minutes)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every value is HTML-escaped (a student named <script>)
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["when"] = _when
        self.templates.filters["age"] = _age
        self.on_login_failed: Callable[[], None] | None = None  # e.g. a metrics counter
        self._port = port
        self.app = web.Application(middlewares=[self._headers, self._csrf])
        from server.web import pages  # the handlers need this object's parts

        pages.add_routes(self.app, self)
        if extra_routes is not None:
            extra_routes(self.app)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.bound_port: int | None = None

    def _settings(self) -> Any:
        settings = self.config().web
        assert settings is not None
        return settings

    async def start(self) -> None:
        settings = self._settings()
        port = settings.port if self._port is None else self._port
        context = None
        if settings.tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, settings.listen, port, ssl_context=context, reuse_address=True
        )
        await self._site.start()
        server = self._site._server  # the bound socket: port 0 becomes a real port
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else port
        scheme = "https" if context else "http"
        log.info("web console on %s://%s:%d/", scheme, settings.listen, self.bound_port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- per request ---------------------------------------------------------------------

    def session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE), self.config())

    def render(
        self, request: web.Request, name: str, status: int = 200, **values: Any
    ) -> web.Response:
        session = self.session(request)
        html = self.templates.get_template(name).render(session=session, **values)
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    def set_cookie(self, response: web.StreamResponse, name: str, value: str) -> None:
        response.set_cookie(
            name,
            value,
            httponly=True,
            samesite="Strict",
            secure=self._settings().tls,
            path="/",
        )

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if isinstance(response, web.HTTPException):
            raise response
        return response

    @web.middleware
    async def _csrf(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every POST carries a CSRF token: the session's, or (sign-in) the form cookie's."""
        if request.method == "POST" and not request.path.startswith("/api/"):
            form = await request.post()
            sent = form.get("csrf")
            if request.path == "/login":
                expected = request.cookies.get(LOGIN_COOKIE)
            else:
                session = self.session(request)
                expected = session.csrf if session is not None else None
            if not expected or not isinstance(sent, str) or not _same(sent, expected):
                raise web.HTTPForbidden(
                    text="refused: the form's security token is missing or stale; reload the page"
                )
        return await handler(request)

    def remote(self, request: web.Request) -> str:
        return peer_address(request)

    async def decide_held(
        self, request: web.Request, run_id: str, district_id: str, *, approve: bool, by: str
    ) -> None:
        """Approve or discard a held run, for a page or the API (the server's queue
        executes an approval); raises held_runs.CannotDecide with the reason."""
        run = await held_runs.find_held(self.store, run_id, district_id)
        address = self.remote(request)
        if approve:
            await held_runs.approve(self.runner, run, by=by, address=address, execute=self.execute)
        else:
            await held_runs.discard(self.store, run, by=by, address=address)


def peer_address(request: web.Request) -> str:
    """The connection's peer address: never a forwarded-for header."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else "?"


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment is not None else "never"


def _age(moment: datetime | None, now: datetime) -> str:
    """`5 min ago`, `3 h ago`, `2 days ago`: how long since an upload, at a glance."""
    if moment is None:
        return "never"
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())
