"""The web console's pages (SPEC §8): one handler per path, each a few lines over
processing's service functions (processing/console.py, processing/held_runs.py)."""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime
from typing import TYPE_CHECKING

from aiohttp import web

from processing import console, held_runs
from processing.error_codes import ERROR_CODES
from processing.model import utc_now
from server.accounts import Attempt, hash_password, verify_password
from server.web.api import Api
from server.web.app import COOKIE, HERE, LOGIN_COOKIE
from server.web.chart import usage_svg
from server.web.sessions import Session, password_fingerprint

if TYPE_CHECKING:
    from server.web.app import WebConsole

NOT_FOUND = "no such page"
SEARCH_LIMIT = 50


def add_routes(app: web.Application, web_console: WebConsole) -> None:
    Api(web_console).add_routes(app)
    pages = Pages(web_console)
    app.add_routes(
        [
            web.get("/login", pages.login_form),
            web.post("/login", pages.login),
            web.post("/logout", pages.logout),
            web.get("/", pages.index),
            web.get("/districts/{district}", pages.district),
            web.get("/districts/{district}/runs/{run}", pages.run),
            web.get("/districts/{district}/runs/{run}/files/{name}", pages.file),
            web.post("/districts/{district}/runs/{run}/approve", pages.approve),
            web.post("/districts/{district}/runs/{run}/discard", pages.discard),
            web.get("/districts/{district}/students", pages.district_students),
            web.get("/students", pages.all_students),
            web.get("/audit", pages.audit),
            web.get("/guide", pages.guide),
            web.static("/static", HERE / "static"),
        ]
    )


class Pages:
    def __init__(self, web_console: WebConsole) -> None:
        self.web = web_console
        # One scrypt for unknown names too, so the answer's timing reveals nothing.
        self._dummy_hash = hash_password(secrets.token_urlsafe(16))

    # ---- signing in -------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        return self._login_page(request, None)

    def _login_page(
        self, request: web.Request, error: str | None, status: int = 200
    ) -> web.Response:
        token = secrets.token_urlsafe(32)
        response = self.web.render(request, "login.html", status, csrf=token, error=error)
        self.web.set_cookie(response, LOGIN_COOKIE, token)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        address = self.web.remote(request)
        bans = self.web.bans()
        attempt = bans.reserve(address)
        if attempt is not Attempt.GRANTED:
            await self.web.store.record_audit(
                who=username[:64],
                action="sign-in refused (banned)",
                district_id=None,
                detail="too many failed sign-ins",
                address=address,
            )
            return self._login_page(
                request, "too many failed sign-ins from your address: try again later", 429
            )
        account = await asyncio.to_thread(self._check, username, password)
        if account is None:
            bans.record_failure(address, reserved=True)
            if self.web.on_login_failed is not None:
                self.web.on_login_failed()
            await self.web.store.record_audit(
                who=username[:64],
                action="sign-in failed",
                district_id=None,
                detail="wrong username or password",
                address=address,
            )
            return self._login_page(request, "wrong username or password", 401)
        bans.record_success(address, reserved=True)
        kind, name, fingerprint = account
        token, session = self.web.sessions.start(kind, name, fingerprint)
        await self.web.store.record_audit(
            who=session.who,
            action="sign-in",
            district_id=None if session.is_operator else name,
            detail=kind,
            address=address,
        )
        response = web.HTTPSeeOther("/")
        self.web.set_cookie(response, COOKIE, token)
        response.del_cookie(LOGIN_COOKIE, path="/")
        return response

    def _check(self, username: str, password: str) -> tuple[str, str, str] | None:
        """(kind, name, password fingerprint) of the account these credentials sign in to."""
        config = self.web.config()
        stored: str | None
        if username in config.operators:
            kind, name = "operator", username
            stored = config.operators[username].password_hash
        else:
            district = next((d for d in config.districts.values() if d.username == username), None)
            kind, name = "district", district.id if district is not None else ""
            allowed = district is not None and district.web_login and district.password_hash
            stored = district.password_hash if allowed and district is not None else None
        if stored is None:
            verify_password(self._dummy_hash, password)  # the same time as a wrong password
            return None
        if not verify_password(stored, password):
            return None
        fingerprint = password_fingerprint(config, kind, name)
        return (kind, name, fingerprint) if fingerprint else None

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.web.sessions.end(request.cookies.get(COOKIE))
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        return response

    # ---- helpers ---------------------------------------------------------------------------

    def _session(self, request: web.Request) -> Session:
        session = self.web.session(request)
        if session is None:
            raise web.HTTPSeeOther("/login")
        return session

    def _district_session(self, request: web.Request) -> tuple[Session, str]:
        """The session and the district of the path; 404 for a district it may not see
        (the same answer as for one that does not exist)."""
        session = self._session(request)
        district_id = request.match_info["district"]
        if not session.may_see(district_id) or district_id not in self.web.config().districts:
            raise web.HTTPNotFound(text=NOT_FOUND)
        return session, district_id

    def _operator(self, request: web.Request) -> Session:
        session = self._session(request)
        if not session.is_operator:
            raise web.HTTPNotFound(text=NOT_FOUND)
        return session

    # ---- pages -----------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if not session.is_operator:
            return await self._district_page(request, session.name)
        now = utc_now()
        rows = await console.overview(self.web.store, self.web.config(), now)
        attention = request.query.get("filter") == "attention"
        if attention:
            rows = [row for row in rows if row.needs_attention]
        key = request.query.get("sort", "district")
        rows = sorted(rows, key=_SORTS.get(key, _SORTS["district"]))
        return self.web.render(
            request, "overview.html", rows=rows, now=now, attention=attention, sort=key
        )

    async def district(self, request: web.Request) -> web.StreamResponse:
        _, district_id = self._district_session(request)
        return await self._district_page(request, district_id)

    async def _district_page(self, request: web.Request, district_id: str) -> web.StreamResponse:
        now = utc_now()
        page = await console.district_page(
            self.web.store, self.web.config(), district_id, now, before=request.query.get("before")
        )
        if page is None:
            raise web.HTTPNotFound(text=NOT_FOUND)
        chart = usage_svg(page.usage, page.row.summary.licenses, now)
        return self.web.render(request, "district.html", page=page, chart=chart, now=now)

    async def run(self, request: web.Request) -> web.StreamResponse:
        _, district_id = self._district_session(request)
        page = await console.run_page(
            self.web.store, self.web.config(), district_id, request.match_info["run"]
        )
        if page is None:
            raise web.HTTPNotFound(text=NOT_FOUND)
        code = request.query.get("code")
        errors = [e for e in page.errors if not code or str(e.code) == code]
        return self.web.render(
            request,
            "run.html",
            page=page,
            errors=errors,
            codes=console.error_codes(page.errors),
            chosen=code,
            fixes=ERROR_CODES,
        )

    async def file(self, request: web.Request) -> web.StreamResponse:
        _, district_id = self._district_session(request)
        run_id, name = request.match_info["run"], request.match_info["name"]
        if not console.result_file_name(run_id, name):
            raise web.HTTPNotFound(text=NOT_FOUND)
        path = self.web.config().server.homes / district_id / "results" / name
        if not path.is_file() or path.is_symlink():
            raise web.HTTPNotFound(text=NOT_FOUND)
        kind = (
            "application/json"
            if name.endswith(".json")
            else ("text/csv" if name.endswith(".csv") else "text/plain")
        )
        return web.Response(
            body=await asyncio.to_thread(path.read_bytes),
            content_type=kind,
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    async def approve(self, request: web.Request) -> web.StreamResponse:
        return await self._decide(request, approve=True)

    async def discard(self, request: web.Request) -> web.StreamResponse:
        return await self._decide(request, approve=False)

    async def _decide(self, request: web.Request, *, approve: bool) -> web.StreamResponse:
        session, district_id = self._district_session(request)
        run_id = request.match_info["run"]
        try:
            await self.web.decide_held(
                request, run_id, district_id, approve=approve, by=session.who
            )
        except held_runs.CannotDecide as exc:
            if not (await self.web.store.find_runs(run_id, district_id)):
                raise web.HTTPNotFound(text=NOT_FOUND) from None
            raise web.HTTPConflict(text=str(exc)) from None
        raise web.HTTPSeeOther(f"/districts/{district_id}/runs/{run_id}")

    async def district_students(self, request: web.Request) -> web.StreamResponse:
        _, district_id = self._district_session(request)
        return await self._students(request, district_id)

    async def all_students(self, request: web.Request) -> web.StreamResponse:
        self._operator(request)
        return await self._students(request, None)

    async def _students(self, request: web.Request, district_id: str | None) -> web.StreamResponse:
        query = request.query.get("q", "").strip()[:64]
        page = max(0, _int(request.query.get("page"), None) or 0)
        found = (
            await self.web.store.search_students(
                query, district_id=district_id, limit=SEARCH_LIMIT + 1, offset=page * SEARCH_LIMIT
            )
            if query
            else []
        )
        return self.web.render(
            request,
            "students.html",
            district_id=district_id,
            query=query,
            students=found[:SEARCH_LIMIT],
            page=page,
            more=len(found) > SEARCH_LIMIT,
        )

    async def audit(self, request: web.Request) -> web.StreamResponse:
        self._operator(request)
        before = _int(request.query.get("before"), None)
        entries = await self.web.store.audit_log(limit=100, before=before)
        return self.web.render(request, "audit.html", entries=entries)

    async def guide(self, request: web.Request) -> web.StreamResponse:
        self._session(request)
        return self.web.render(request, "guide.html", fixes=ERROR_CODES)


def _int(text: str | None, default: int | None) -> int | None:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _stamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else 0.0


_SORTS = {
    "district": lambda row: row.summary.name.lower(),
    "upload": lambda row: _stamp(row.summary.last_upload_at),
    "state": lambda row: row.summary.last_run.state if row.summary.last_run else "",
    "held": lambda row: -row.summary.held_runs,
    "licenses": lambda row: -row.summary.used,
}
