"""The web console (SPEC §8) against the real server: every page, who may see what, and
every security property, over plain HTTP as a browser speaks it."""

from __future__ import annotations

import asyncio
import re
import statistics
import time

import aiohttp
import asyncssh
import pytest

from processing.error_codes import ERROR_CODES
from processing.model import RowCode
from tests.conftest import SFTP_PASSWORD, SHE, SPR, add_toml_keys, finished_runs, pw, student
from tests.server.web_fixtures import (
    OPERATOR,
    OPERATOR_PASSWORD,
    ROSTER,
    WebHandle,
    page_csrf,
    sign_in,
    upload,
)


def security_headers_ok(response: aiohttp.ClientResponse) -> None:
    csp = response.headers["Content-Security-Policy"]
    assert "script-src" not in csp or "'unsafe-inline'" not in csp
    assert "default-src 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"


async def test_sign_in_sets_a_strict_httponly_cookie_and_every_response_has_the_headers(
    web: WebHandle,
) -> None:
    async with web.client() as client:
        async with client.get("/", allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/login"
            security_headers_ok(response)
        async with client.get("/login") as response:
            html = await response.text()
            assert 'name="username"' in html and 'name="password"' in html
            security_headers_ok(response)
        signed = await sign_in(client, OPERATOR, OPERATOR_PASSWORD)
        assert signed.status == 303 and signed.headers["Location"] == "/"
        cookie = next(c for c in signed.headers.getall("Set-Cookie") if "eams_session=" in c)
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Secure" not in cookie  # plain HTTP here; HTTPS sets it
        token = cookie.split("eams_session=", 1)[1].split(";", 1)[0]
        assert web.app.web is not None
        assert token not in web.app.web.sessions.stored_keys()  # only its hash is kept
        async with client.get("/") as response:
            assert response.status == 200
            security_headers_ok(response)
            html = await response.text()
        assert "Springfield" in html and "Shelbyville" in html


async def test_the_overview_filters_districts_that_need_attention(web: WebHandle) -> None:
    await upload(web, b"Student,Name\r\nS1,Ann\r\n", district=SHE)  # a failed run
    await finished_runs(web, 1, SHE)
    await upload(web, ROSTER)
    await finished_runs(web, 1)
    async with web.client() as client:
        await sign_in(client, OPERATOR, OPERATOR_PASSWORD)
        async with client.get("/?filter=attention") as response:
            html = await response.text()
        assert "Shelbyville" in html and "Springfield Public" not in html
        async with client.get("/?sort=licenses") as response:
            assert response.status == 200


async def test_a_district_sees_its_page_and_a_404_for_every_path_of_another(
    web: WebHandle,
) -> None:
    await upload(web, ROSTER, district=SHE)
    (run,) = await finished_runs(web, 1, SHE)
    other = [
        f"/districts/{SHE}",
        f"/districts/{SHE}/runs/{run.run_id}",
        f"/districts/{SHE}/runs/{run.run_id}/files/{run.run_id}.result.json",
        f"/districts/{SHE}/students?q=S",
        "/students?q=S",
        "/audit",
    ]
    async with web.client() as client:
        await sign_in(client, SPR, SFTP_PASSWORD)
        async with client.get("/") as response:
            assert "Springfield" in await response.text()
        async with client.get("/districts/nowhere") as response:
            unknown = (response.status, await response.text())
        for path in other:
            async with client.get(path, allow_redirects=False) as response:
                assert (response.status, await response.text()) == unknown, path
        csrf = await page_csrf(client)
        async with client.post(
            f"/districts/{SHE}/runs/{run.run_id}/discard", data={"csrf": csrf}
        ) as response:
            assert (response.status, await response.text()) == unknown
    assert unknown[0] == 404


async def test_unknown_names_and_wrong_passwords_get_the_same_answer_in_the_same_time(
    web: WebHandle,
) -> None:
    add_toml_keys(web.config_path, f"districts.{SHE}", web_login=False)
    assert await web.app.reload()
    answers = set()
    timings: dict[str, list[float]] = {"unknown": [], "wrong": []}
    async with web.client() as client:
        for _ in range(2):
            for kind, name in (("unknown", "nobody-here"), ("wrong", SPR)):
                started = time.perf_counter()
                response = await sign_in(client, name, "not-the-password")
                timings[kind].append(time.perf_counter() - started)
                answers.add((response.status, "eams_session" in str(response.cookies)))
                web.app.bans = type(web.app.bans)(5, 15)  # this test is not about bans
        denied = await sign_in(client, SHE, SFTP_PASSWORD)  # web_login = false
        answers.add((denied.status, "eams_session" in str(denied.cookies)))
    assert answers == {(401, False)}
    ratio = statistics.median(timings["unknown"]) / statistics.median(timings["wrong"])
    assert 0.5 < ratio < 2.0, timings


async def test_every_post_needs_the_csrf_token(web: WebHandle) -> None:
    async with web.client() as client:
        async with client.post(
            "/login", data={"username": OPERATOR, "password": OPERATOR_PASSWORD}
        ) as response:
            assert response.status == 403
        await sign_in(client, OPERATOR, OPERATOR_PASSWORD)
        for data in ({}, {"csrf": "forged"}):
            async with client.post("/logout", data=data, allow_redirects=False) as response:
                assert response.status == 403
        async with client.get("/", allow_redirects=False) as response:
            assert response.status == 200  # still signed in


async def test_logout_and_a_changed_password_end_the_session(web: WebHandle) -> None:
    async with web.client() as client:
        await sign_in(client, OPERATOR, OPERATOR_PASSWORD)
        csrf = await page_csrf(client)
        async with client.post("/logout", data={"csrf": csrf}, allow_redirects=False) as out:
            assert out.status == 303
        async with client.get("/", allow_redirects=False) as response:
            assert response.status == 303
    async with web.client() as client:
        await sign_in(client, SPR, SFTP_PASSWORD)
        async with client.get("/", allow_redirects=False) as response:
            assert response.status == 200
        from server.accounts import hash_password

        add_toml_keys(web.config_path, f"districts.{SPR}", password_hash=hash_password("n3w-pw!"))
        assert await web.app.reload()  # what SIGHUP does
        async with client.get("/", allow_redirects=False) as response:
            assert response.status == 303


async def test_failed_web_sign_ins_count_toward_the_sftp_ban(web: WebHandle) -> None:
    attempts = web.app.config.server.login_attempts
    async with web.client() as client:
        for _ in range(attempts):
            assert (await sign_in(client, SPR, "wrong")).status == 401
        assert (await sign_in(client, SPR, SFTP_PASSWORD)).status == 429
    with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError, OSError)):
        async with web.connect():
            pass


async def test_values_are_escaped_and_no_student_password_is_shown(web: WebHandle) -> None:
    rows = [
        student("S1", first="<script>alert(1)</script>"),
        student("S2"),
        student("S3", grade="77"),  # rejected: INVALID_GRADE
    ]
    await upload(web, rows)
    (run,) = await finished_runs(web, 1)
    pages = [
        "/",
        f"/districts/{SPR}",
        f"/districts/{SPR}/runs/{run.run_id}",
        f"/districts/{SPR}/runs/{run.run_id}/files/{run.run_id}.errors.csv",
        f"/districts/{SPR}/runs/{run.run_id}/files/{run.run_id}.result.txt",
        f"/districts/{SPR}/students?q=s",
        "/students?q=S",
        "/guide",
    ]
    async with web.client() as client:
        await sign_in(client, OPERATOR, OPERATOR_PASSWORD)
        seen = []
        for path in pages:
            async with client.get(path) as response:
                assert response.status == 200, path
                seen.append(await response.text())
    text = "\n".join(seen)
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    for row in rows:
        assert pw(row[1]) not in text


async def test_a_run_page_filters_rejected_rows_and_gives_a_fix_per_code(web: WebHandle) -> None:
    rows = [*ROSTER, student("S7", grade="77"), student("S8", status="Q"), student("S9", "D")]
    await upload(web, rows)
    (run,) = await finished_runs(web, 1)
    base = f"/districts/{SPR}/runs/{run.run_id}"
    async with web.client() as client:
        await sign_in(client, SPR, SFTP_PASSWORD)
        async with client.get(base) as response:
            html = await response.text()
        for code in ("INVALID_GRADE", "INVALID_STATUS", "STUDENT_NOT_FOUND"):
            assert code in html
        async with client.get(f"{base}?code=INVALID_GRADE") as response:
            filtered = await response.text()
        table = filtered.split('id="rejected"', 1)[1]
        assert "INVALID_GRADE" in table and "STUDENT_NOT_FOUND" not in table
        assert str(ERROR_CODES[RowCode.INVALID_GRADE].fix).split("<")[0][:40] in filtered.replace(
            "&#39;", "'"
        ).replace("&#34;", '"')
        async with client.get(f"{base}/files/{run.run_id}.errors.csv") as response:
            assert response.status == 200
            assert (await response.text()).startswith("Line,Error Code,Message,")
        for name in ("../../students.csv", "students.csv", f"{run.run_id}.result.jsonx"):
            async with client.get(f"{base}/files/{name}") as response:
                assert response.status == 404, name


async def test_a_held_run_is_approved_from_the_web_and_recorded(web: WebHandle) -> None:
    roster = [student(f"S{n:03d}") for n in range(40)]
    await upload(web, roster)
    await finished_runs(web, 1)
    await upload(web, [student(f"S{n:03d}", "D") for n in range(30)])
    _, held = await finished_runs(web, 2)
    assert held.state == "held"
    async with web.client() as client:
        await sign_in(client, SPR, SFTP_PASSWORD)
        async with client.get(f"/districts/{SPR}") as response:
            html = await response.text()
        assert "Held runs" in html and "Approve" in html
        csrf = await page_csrf(client, f"/districts/{SPR}")
        async with client.post(
            f"/districts/{SPR}/runs/{held.run_id}/approve",
            data={"csrf": csrf},
            allow_redirects=False,
        ) as response:
            assert response.status == 303
        async with client.post(
            f"/districts/{SPR}/runs/{held.run_id}/approve", data={"csrf": csrf}
        ) as response:
            assert response.status == 409  # no longer held
    record = await web.app.store.get_run(SPR, held.run_id)
    assert record.state == "done" and record.result is not None
    assert record.decided_by == f"district:{SPR}" and record.decided_at is not None
    assert record.result.deactivated == 30
    async with web.client() as client:
        await sign_in(client, OPERATOR, OPERATOR_PASSWORD)
        async with client.get("/audit") as response:
            audit = await response.text()
    assert f"district:{SPR}" in audit and "approve" in audit and held.run_id in audit
    assert "sign-in" in audit


async def test_student_search_and_the_chart(web: WebHandle) -> None:
    await upload(web, [*ROSTER, student("Z9", first="Zoë", last="Quinn")])
    await finished_runs(web, 1)
    async with web.client() as client:
        await sign_in(client, OPERATOR, OPERATOR_PASSWORD)
        async with client.get("/students?q=qui") as response:
            html = await response.text()
        assert "Z9" in html and "S1" not in html.split('id="students"', 1)[1]
        async with client.get(f"/districts/{SPR}") as response:
            page = await response.text()
        assert "<svg" in page and 'class="used"' in page
        async with client.get("/guide") as response:
            guide = await response.text()
        assert all(str(code) in guide for code in ERROR_CODES)
        assert re.search(r"Sign out", guide)
        async with client.get("/static/style.css") as response:
            assert response.status == 200


async def test_the_console_stops_with_the_server(web: WebHandle) -> None:
    base = web.base
    await web.app.stop()
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.ClientConnectionError):
            await asyncio.wait_for(client.get(f"{base}/login"), 5)
