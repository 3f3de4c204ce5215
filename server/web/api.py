"""The JSON API for operators' scripts (SPEC §9), under /api/v1/.

Authorised by `Authorization: Bearer <token>` (`eams token create`; only a
hash is stored and compared) or by a console session: an operator's for
everything, a district's for its own district's read endpoints (any other
district is a 404, as in the pages). A POST from a session carries the
session's CSRF token in `X-CSRF-Token`; a bearer request needs none (no
browser sends it by itself). Errors are `{"error": ..., "code": ...}`.
Every answer comes from the same service functions as the pages and the CLI.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from aiohttp import web
from attrs import frozen

from processing import console, held_runs
from processing.model import iso, utc_now

if TYPE_CHECKING:
    from server.web.app import WebConsole

PREFIX = "/api/v1"
MAX_LIMIT = 500


@frozen
class Caller:
    who: str  # for the audit log and the run record
    district: str | None  # a district session: only this district; None: everything


def _error(status: int, code: str, message: str) -> web.HTTPException:
    classes = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
    }
    return classes[status](
        text=web.json_response({"error": message, "code": code}).text,
        content_type="application/json",
    )


class Api:
    def __init__(self, web_console: WebConsole) -> None:
        self.web = web_console

    def add_routes(self, app: web.Application) -> None:
        app.add_routes(
            [
                web.get(f"{PREFIX}/districts", self.districts),
                web.get(f"{PREFIX}/districts/{{district}}/runs", self.runs),
                web.get(f"{PREFIX}/districts/{{district}}/runs/{{run}}", self.run),
                web.get(f"{PREFIX}/districts/{{district}}/students", self.students),
                web.get(f"{PREFIX}/districts/{{district}}/licenses", self.licenses),
                web.post(f"{PREFIX}/districts/{{district}}/runs/{{run}}/approve", self.approve),
                web.post(f"{PREFIX}/districts/{{district}}/runs/{{run}}/discard", self.discard),
            ]
        )

    # ---- who is asking -------------------------------------------------------------------

    async def caller(self, request: web.Request, *, write: bool = False) -> Caller:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            digest = hashlib.sha256(header[7:].strip().encode()).hexdigest()
            name = await self.web.store.token_user(digest)
            if name is None:
                raise _error(401, "UNAUTHORIZED", "unknown or revoked token")
            return Caller(f"token:{name}", None)
        session = self.web.session(request)
        if session is None:
            raise _error(401, "UNAUTHORIZED", "sign in, or send Authorization: Bearer <token>")
        if write:
            sent = request.headers.get("X-CSRF-Token", "")
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                raise _error(403, "CSRF", "a POST from a session needs its X-CSRF-Token header")
            if not session.is_operator:
                raise _error(403, "FORBIDDEN", "districts decide held runs in the console")
        return Caller(session.who, None if session.is_operator else session.name)

    def district_of(self, request: web.Request, caller: Caller) -> str:
        district_id = request.match_info["district"]
        visible = caller.district is None or caller.district == district_id
        if not visible or district_id not in self.web.config().districts:
            raise _error(404, "NOT_FOUND", f"no district {district_id}")
        return district_id

    # ---- read ------------------------------------------------------------------------------

    async def districts(self, request: web.Request) -> web.StreamResponse:
        caller = await self.caller(request)
        rows = await console.overview(self.web.store, self.web.config(), utc_now())
        out = []
        for row in rows:
            s = row.summary
            if caller.district is not None and s.district_id != caller.district:
                continue
            out.append(
                {
                    "id": s.district_id,
                    "name": s.name,
                    "last_upload_at": iso(s.last_upload_at) if s.last_upload_at else None,
                    "stale": row.stale,
                    "held_runs": s.held_runs,
                    "last_run": console.run_object(s.last_run) if s.last_run else None,
                    "licenses": await self.web.store.list_orders(s.district_id),
                }
            )
        return web.json_response(out)

    async def runs(self, request: web.Request) -> web.StreamResponse:
        caller = await self.caller(request)
        district_id = self.district_of(request, caller)
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            raise _error(400, "BAD_REQUEST", "limit must be a whole number") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise _error(400, "BAD_REQUEST", f"limit must be between 1 and {MAX_LIMIT}")
        before = request.query.get("before")
        if before is not None and not await self.web.store.find_runs(before, district_id):
            raise _error(400, "BAD_REQUEST", f"no run {before} to page from")
        runs = await self.web.store.runs_page(district_id, limit=limit, before=before)
        return web.json_response([console.run_object(r) for r in runs])

    async def run(self, request: web.Request) -> web.StreamResponse:
        caller = await self.caller(request)
        district_id = self.district_of(request, caller)
        page = await console.run_page(
            self.web.store, self.web.config(), district_id, request.match_info["run"]
        )
        if page is None:
            raise _error(404, "NOT_FOUND", f"no run {request.match_info['run']}")
        body: dict[str, Any] = console.run_object(page.record)
        body["rejected"] = [
            {"line": e.line, "code": str(e.code), "message": e.message} for e in page.errors
        ]
        body["missing_students"] = [s.student_id for s in page.missing]
        return web.json_response(body)

    async def students(self, request: web.Request) -> web.StreamResponse:
        caller = await self.caller(request)
        district_id = self.district_of(request, caller)
        query = request.query.get("q", "").strip()
        if not query:
            return web.json_response(await self.web.store.list_students(district_id))
        found = await self.web.store.search_students(
            query[:64], district_id=district_id, limit=MAX_LIMIT
        )
        return web.json_response([{k: v for k, v in s.items() if k != "district"} for s in found])

    async def licenses(self, request: web.Request) -> web.StreamResponse:
        caller = await self.caller(request)
        district_id = self.district_of(request, caller)
        return web.json_response(await self.web.store.list_orders(district_id))

    # ---- decide ----------------------------------------------------------------------------

    async def approve(self, request: web.Request) -> web.StreamResponse:
        return await self._decide(request, approve=True)

    async def discard(self, request: web.Request) -> web.StreamResponse:
        return await self._decide(request, approve=False)

    async def _decide(self, request: web.Request, *, approve: bool) -> web.StreamResponse:
        caller = await self.caller(request, write=True)
        district_id = self.district_of(request, caller)
        run_id, store = request.match_info["run"], self.web.store
        if not await store.find_runs(run_id, district_id):
            raise _error(404, "NOT_FOUND", f"no run {run_id}")
        try:
            await self.web.decide_held(request, run_id, district_id, approve=approve, by=caller.who)
        except held_runs.CannotDecide as exc:
            raise _error(409, "NOT_HELD", str(exc)) from None
        return web.json_response(console.run_object(await store.get_run(district_id, run_id)))
