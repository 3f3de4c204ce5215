"""Operations (SPEC §9): /healthz, /metrics, API tokens and the JSON API, against the
real server; the OpenAPI file checked against the routes the server registers."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp

from processing.store import database_path
from tests.conftest import SFTP_PASSWORD, SHE, SPR, eams, finished_runs, student
from tests.server.web_fixtures import (
    OPERATOR,
    OPERATOR_PASSWORD,
    ROSTER,
    WebHandle,
    page_csrf,
    sign_in,
    upload,
)

ROOT = Path(__file__).resolve().parents[2]


async def get_json(client: aiohttp.ClientSession, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.get(path, **kwargs) as response:
        return response.status, await response.json()


async def new_token(web: WebHandle, name: str) -> str:
    code, out, err = await asyncio.to_thread(eams, "token", "create", name, config=web.config_path)
    assert code == 0, err
    token = out.strip()
    assert len(token) >= 22  # at least 128 bits, URL-safe
    return token


# ---- /healthz ------------------------------------------------------------------------------


async def test_healthz_is_ok_then_failing_while_the_database_is_locked_and_uploads_stay_safe(
    web: WebHandle,
) -> None:
    async with web.client() as client:
        status, body = await get_json(client, "/healthz")
        assert status == 200
        assert body == {
            "status": "ok",
            "sftp": True,
            "database": True,
            "queue_depth": 0,
            "outbox_pending": 0,
        }
        # The database goes away (a lost mount, a deleted file) while another process
        # holds its write lock: nothing can record a run meanwhile.
        db = database_path(web.app.config.server.data)
        locker = sqlite3.connect(db, timeout=10)
        locker.execute("BEGIN IMMEDIATE")
        db.rename(db.with_name("away.sqlite3"))
        try:
            started = time.monotonic()
            status, body = await get_json(client, "/healthz")
            assert time.monotonic() - started < 1.0
            assert status == 503 and body["status"] == "failing"
            assert body["database"] is False and body["sftp"] is True
            await upload(web, ROSTER)  # acknowledged: spooled, runs when the database returns
            assert not await asyncio.to_thread(lambda: list(web.home().glob("results/*")))
        finally:
            db.with_name("away.sqlite3").rename(db)
            locker.rollback()
            locker.close()
        (run,) = await finished_runs(web, 1)
        assert run.state == "done"
        status, body = await get_json(client, "/healthz")
        assert status == 200 and body["database"] is True


async def test_healthz_answers_within_a_second_during_a_big_run(web: WebHandle) -> None:
    big = [student(f"B{n:06d}") for n in range(60_000)]  # over 4 MiB: a worker process
    task = asyncio.create_task(upload(web, big))
    async with web.client() as client:
        slowest = 0.0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            started = time.monotonic()
            status, _ = await get_json(client, "/healthz")
            slowest = max(slowest, time.monotonic() - started)
            assert status == 200
            runs = await web.app.store.list_runs(SPR)
            if runs and runs[0].state == "done":
                break
            await asyncio.sleep(0.1)
    await task
    assert slowest < 1.0


# ---- /metrics -------------------------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()) and (
            head == name or head.startswith(name + "{")
        ):
            return float(value)
    return 0.0


async def test_metrics_move_with_uploads_runs_failed_logins_and_emails(web: WebHandle) -> None:
    async with web.client() as client:
        async with client.get("/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            before = await response.text()
        await upload(web, ROSTER)
        await finished_runs(web, 1)
        await sign_in(client, SPR, "wrong")
        await asyncio.wait_for(web.app.sender.send_due(), 10)
        async with client.get("/metrics") as response:
            after = await response.text()
    assert metric(after, "eams_uploads_total", district=SPR, kind="upload") == 1
    assert metric(after, "eams_runs_total", district=SPR, state="done") == 1
    assert metric(after, "eams_rows_total", district=SPR, outcome="added") == 5
    assert metric(after, "eams_login_failures_total", protocol="web") == 1
    assert metric(after, "eams_run_duration_seconds_count") == 1
    assert metric(after, "eams_licenses", district=SPR, kind="used") == 5
    assert metric(after, "eams_last_upload_timestamp_seconds", district=SPR) > 0
    assert metric(after, "eams_emails_sent_total") >= 1
    for name in ("eams_queue_depth", "eams_outbox_pending", "eams_sftp_sessions"):
        assert re.search(rf"^{name} \d", after, re.MULTILINE), name
    assert metric(before, "eams_runs_total", district=SPR, state="done") == 0


async def test_metrics_refuse_addresses_outside_the_allow_list(web: WebHandle) -> None:
    text = web.config_path.read_text(encoding="utf-8")
    allow = '[web]\nmetrics_allow = ["10.0.0.0/8"]\n'
    web.config_path.write_text(text.replace("[web]\n", allow, 1), encoding="utf-8")
    assert await web.app.reload()
    forwarded = {"X-Forwarded-For": "10.1.2.3"}  # never believed: the peer is 127.0.0.1
    async with web.client() as client, client.get("/metrics", headers=forwarded) as response:
        assert response.status == 403
        assert (await response.json())["code"] == "FORBIDDEN"


# ---- tokens and the API -------------------------------------------------------------------------


async def test_a_token_reads_the_api_and_a_revoked_one_fails_at_once(web: WebHandle) -> None:
    token = await new_token(web, "nightly-report")
    code, out, _ = await asyncio.to_thread(eams, "token", "list", config=web.config_path)
    assert code == 0 and "nightly-report" in out and token not in out
    bearer = {"Authorization": f"Bearer {token}"}
    async with web.client() as client:
        status, districts = await get_json(client, "/api/v1/districts", headers=bearer)
        assert status == 200 and {d["id"] for d in districts} == {SPR, SHE}
        assert set(districts[0]) == {
            "id",
            "name",
            "last_upload_at",
            "stale",
            "held_runs",
            "last_run",
            "licenses",
        }
        code, _, _ = await asyncio.to_thread(
            eams, "token", "revoke", "nightly-report", config=web.config_path
        )
        assert code == 0
        status, body = await get_json(client, "/api/v1/districts", headers=bearer)
        assert (status, body["code"]) == (401, "UNAUTHORIZED")
        status, body = await get_json(client, "/api/v1/districts")
        assert status == 401 and set(body) == {"error", "code"}
    entries = await web.app.store.audit_log(limit=10)
    assert {"token create", "token revoke"} <= {e.action for e in entries}


async def test_runs_paginate_and_a_run_lists_its_rejected_rows(web: WebHandle) -> None:
    token = await new_token(web, "ops")
    bearer = {"Authorization": f"Bearer {token}"}
    for n in range(3):
        await upload(web, [*ROSTER, student(f"X{n}", grade="77")])
        await finished_runs(web, n + 1)
    async with web.client() as client:
        base = f"/api/v1/districts/{SPR}"
        status, runs = await get_json(client, f"{base}/runs?limit=2", headers=bearer)
        assert status == 200 and len(runs) == 2
        status, older = await get_json(
            client, f"{base}/runs?limit=2&before={runs[-1]['run_id']}", headers=bearer
        )
        assert [r["run_id"] for r in older] != [r["run_id"] for r in runs] and len(older) == 1
        status, body = await get_json(client, f"{base}/runs?limit=x", headers=bearer)
        assert (status, body["code"]) == (400, "BAD_REQUEST")
        status, detail = await get_json(client, f"{base}/runs/{runs[0]['run_id']}", headers=bearer)
        assert status == 200 and detail["missing_students"] == []
        assert [r["code"] for r in detail["rejected"]] == ["INVALID_GRADE"]
        status, students = await get_json(client, f"{base}/students?q=s1", headers=bearer)
        assert [s["student_id"] for s in students] == ["S1"] and "password" not in students[0]
        status, licenses = await get_json(client, f"{base}/licenses", headers=bearer)
        assert status == 200 and licenses[0]["kind"] == "enterprise"
        status, body = await get_json(client, "/api/v1/districts/nowhere/runs", headers=bearer)
        assert (status, body["code"]) == (404, "NOT_FOUND")
        async with client.post(f"{base}/runs/{runs[0]['run_id']}/approve", headers=bearer) as r:
            assert r.status == 409 and (await r.json())["code"] == "NOT_HELD"


async def test_sessions_on_the_api_operator_csrf_and_district_scope(web: WebHandle) -> None:
    await upload(web, [student(f"S{n:03d}") for n in range(40)])
    await finished_runs(web, 1)
    await upload(web, [student(f"S{n:03d}", "D") for n in range(30)])
    _, held = await finished_runs(web, 2)
    path = f"/api/v1/districts/{SPR}/runs/{held.run_id}/approve"
    async with web.client() as district:
        await sign_in(district, SPR, SFTP_PASSWORD)
        status, own = await get_json(district, "/api/v1/districts")
        assert status == 200 and [d["id"] for d in own] == [SPR]
        status, body = await get_json(district, f"/api/v1/districts/{SHE}/runs")
        assert (status, body["code"]) == (404, "NOT_FOUND")
    async with web.client() as operator:
        await sign_in(operator, OPERATOR, OPERATOR_PASSWORD)
        async with operator.post(path) as response:
            assert response.status == 403 and (await response.json())["code"] == "CSRF"
        csrf = await page_csrf(operator)
        async with operator.post(path, headers={"X-CSRF-Token": csrf}) as response:
            assert response.status == 200
            decided = await response.json()
    assert decided["state"] == "done" and decided["deactivated"] == 30


async def test_every_route_is_in_the_openapi_file_and_every_documented_route_answers(
    web: WebHandle,
) -> None:
    spec = json.loads((ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))
    assert spec["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    assert web.app.web is not None
    registered = set()
    for route in web.app.web.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path") or ""
        if route.method == "HEAD" or not (
            path.startswith("/api/") or path in ("/healthz", "/metrics")
        ):
            continue
        registered.add((route.method, path))
    assert registered == documented
    token = await new_token(web, "coverage")
    bearer = {"Authorization": f"Bearer {token}"}
    await upload(web, ROSTER)
    (run,) = await finished_runs(web, 1)
    async with web.client() as client:
        for method, path in sorted(documented):
            url = path.replace("{district}", SPR).replace("{run}", run.run_id)
            async with client.request(method, url, headers=bearer) as response:
                expected = {200, 409} if method == "POST" else {200}
                assert response.status in expected, (method, url, response.status)
