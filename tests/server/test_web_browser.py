"""The web console (SPEC §8) in a real browser: Debian's headless Chromium, driven by
chromedriver through Selenium, against the real in-process server.

A district signs in, opens its latest (partial) run, filters the rejected rows by an
error code and downloads errors.csv; an operator approves a held run, sees it applied
and finds the approval in the audit log. Screenshots of the pages (desktop, and the
district page at phone size) are saved under the test's temp folder and their paths
printed (run with -s to see them).

The server runs on the test's event loop and Selenium blocks, so every browser step
runs in a thread (`step`) and the loop keeps serving. Every wait has a deadline
(WebDriverWait, the page-load timeout, and `STEP_SECONDS` around each step). A missing
chromium or chromedriver fails the tests: CI installs both (.ci/run).
"""

from __future__ import annotations

import asyncio
import base64
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.conftest import ORDERS, SFTP_PASSWORD, SPR, finished_runs, pw, student
from tests.server.web_fixtures import (
    OPERATOR,
    OPERATOR_PASSWORD,
    ROSTER,
    WebHandle,
    upload,
)

WAIT_SECONDS = 15.0  # for any one thing to appear in the browser
PAGE_LOAD_SECONDS = 30  # chromedriver's own bound on a navigation
STEP_SECONDS = 60.0  # the bound on one blocking browser step, whatever hangs
DESKTOP = (1280, 1000)
PHONE = (390, 844)  # an iPhone 12-15 viewport in CSS pixels
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

# The outermost elements wider than the screen that no scrolling box of theirs clips:
# what makes a page scroll sideways on a phone.
STICKING_OUT = """
const screen = document.documentElement.clientWidth;
const clipped = (e) => {
  for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
    if (getComputedStyle(a).overflowX !== "visible") return true;
  }
  return false;
};
const out = [];
for (const e of document.body.querySelectorAll("*")) {
  const right = e.getBoundingClientRect().right;
  const parent = e.parentElement.getBoundingClientRect().right;
  if (right > screen + 1 && parent <= screen + 1 && !clipped(e)) {
    const name = e.tagName.toLowerCase() + (e.id ? "#" + e.id : "")
      + (e.className && typeof e.className === "string" ? "." + e.className : "");
    const where = e.closest("section") ? e.closest("section").querySelector("h2") : null;
    out.push(name + (where ? " in " + where.textContent : "") + ": " + Math.round(right) + " px");
  }
}
return out;
"""

T = TypeVar("T")


class Browser:
    """One Chromium session and what the test collects from it: every page source seen
    (to look for student passwords), the screenshots, the downloads."""

    def __init__(self, driver: webdriver.Chrome, folder: Path) -> None:
        self.driver = driver
        self.downloads = folder / "downloads"
        self.shots = folder / "screenshots"
        self.shots.mkdir(exist_ok=True)
        self.base = ""
        self.sources: list[str] = []

    # ---- blocking helpers: call them through step() ------------------------------------

    def wait(self) -> WebDriverWait[webdriver.Chrome]:
        return WebDriverWait(self.driver, WAIT_SECONDS)

    def loaded(self, url: str) -> None:
        """Wait until the browser shows `url` with its heading; keep its source."""
        self.wait().until(EC.url_to_be(url))
        self.wait().until(EC.presence_of_element_located((By.TAG_NAME, "h1")))
        self.sources.append(self.driver.page_source)

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)
        self.loaded(self.base + path)

    def follow(self, element: WebElement, path: str) -> None:
        """Click a link or a submit button and wait for the page it leads to."""
        self.leaving(element.click)
        self.loaded(self.base + path)

    def leaving(self, action: Callable[[], object]) -> None:
        """Do `action` and wait until the browser has left the current document.

        A mark on the current window, gone once a new document has loaded: sturdier
        than EC.staleness_of, which this chromedriver sometimes answers with "Node with
        given id does not belong to the document" instead of a stale element."""
        self.driver.execute_script("window.eamsLeaving = true")
        action()
        self.wait().until(
            lambda driver: driver.execute_script("return window.eamsLeaving !== true"),
            "the browser to leave the page",
        )

    def css(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def sign_in(self, username: str, password: str) -> None:
        self.open("/login")
        self.css("input[name=username]").send_keys(username)
        self.css("input[name=password]").send_keys(password)
        self.follow(self.css("form.login button[type=submit]"), "/")

    def heading(self) -> str:
        return self.css("h1").text

    def table(self, table_id: str) -> list[list[str]]:
        """The cells' text of each body row of the table with this id."""
        rows = self.driver.find_elements(By.CSS_SELECTOR, f"table#{table_id} tbody tr")
        return [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]

    def viewport(self, width: int, height: int, *, phone: bool = False) -> None:
        """The page's viewport in CSS pixels (a phone's applies the meta viewport and
        draws at twice the pixels, as phones do)."""
        metrics = {
            "width": width,
            "height": height,
            "deviceScaleFactor": 2 if phone else 1,
            "mobile": phone,
        }
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)

    def screenshot(self, name: str, *, whole_page: bool = True) -> Path:
        """A PNG of the page: all of it, or what fits the viewport."""
        path = self.shots / f"{name}.png"
        shot: dict[str, object] = {"format": "png"}
        if whole_page:
            size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
            shot["captureBeyondViewport"] = True
            width, height = size["width"], size["height"]
            shot["clip"] = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        data = self.driver.execute_cdp_cmd("Page.captureScreenshot", shot)["data"]
        path.write_bytes(base64.b64decode(data))
        print(f"screenshot: {path}")
        return path

    def phone_screenshots(self, name: str) -> tuple[list[Path], int, list[str]]:
        """The current page on a phone: its screen, and the whole page. Also returns the
        page's width in CSS pixels (more than the phone's: it scrolls sideways) and the
        outermost elements that stick out of the screen, outside any scrolling box."""
        self.viewport(*PHONE, phone=True)
        try:
            self.reload()
            shots = [
                self.screenshot(name, whole_page=False),
                self.screenshot(f"{name}-whole"),
            ]
            page_width = self.driver.execute_script("return document.documentElement.scrollWidth")
            wide = self.driver.execute_script(STICKING_OUT)
            assert isinstance(page_width, int) and isinstance(wide, list), (page_width, wide)
            return shots, page_width, [str(item) for item in wide]
        finally:
            self.viewport(*DESKTOP)
            self.reload()

    def reload(self) -> None:
        url = self.driver.current_url
        self.leaving(self.driver.refresh)
        self.loaded(url)

    def downloaded(self, name: str) -> Path:
        """Wait until Chromium has finished writing `name` into the download folder."""
        path = self.downloads / name

        def finished(_: webdriver.Chrome) -> bool:
            return path.is_file() and not any(self.downloads.glob("*.crdownload"))

        self.wait().until(finished, f"{name} downloaded into {self.downloads}")
        return path


async def step(call: Callable[..., T], *args: object) -> T:
    """Run one blocking browser step in a thread, bounded, while the server keeps serving."""
    return await asyncio.wait_for(asyncio.to_thread(call, *args), STEP_SECONDS)


def start_chromium(chromium: str, chromedriver: str, folder: Path) -> webdriver.Chrome:
    downloads = folder / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={folder / 'chromium-profile'}")
    options.add_argument("--window-size={},{}".format(*DESKTOP))
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "download.directory_upgrade": True,
        },
    )
    # An explicit driver path: Selenium Manager (which would download one) never runs.
    service = Service(executable_path=chromedriver, log_output=str(folder / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(PAGE_LOAD_SECONDS)
        driver.set_script_timeout(WAIT_SECONDS)
        # The viewport itself is 1280x1000 (the window's frame would take some of it).
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": DESKTOP[0], "height": DESKTOP[1], "deviceScaleFactor": 1, "mobile": False},
        )
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
    except BaseException:
        driver.quit()
        raise
    return driver


async def quit_chromium(driver: webdriver.Chrome) -> None:
    try:
        await asyncio.wait_for(asyncio.to_thread(driver.quit), STEP_SECONDS)
    except TimeoutError:
        # Stuck: kill the chromedriver this test started, so that the steps still
        # waiting on it fail instead of holding the event loop's threads.
        driver.service.process.kill()
        raise


@pytest.fixture
async def browser(tmp_path: Path, web: WebHandle) -> AsyncIterator[Browser]:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.fail(
            "these tests drive a real browser: install Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/run does)",
            pytrace=False,
        )
    folder = tmp_path / "browser"
    folder.mkdir()
    driver = await asyncio.to_thread(start_chromium, chromium, chromedriver, folder)
    try:
        session = Browser(driver, folder)
        session.base = web.base
        yield session
    finally:
        await quit_chromium(driver)


def no_student_password(texts: list[str], rows: list[list[str]]) -> None:
    for row in rows:
        for text in texts:
            assert pw(row[1]) not in text, f"the password of {row[1]} is shown"


async def test_a_district_opens_its_partial_run_filters_by_code_and_downloads_errors_csv(
    web: WebHandle, browser: Browser
) -> None:
    await upload(web, ROSTER)  # an earlier night: a clean run
    partial = [
        *ROSTER,
        student("S6"),
        student("S7", grade="77"),  # INVALID_GRADE
        student("S8", status="Q"),  # INVALID_STATUS
        student("S10", grade="X"),  # INVALID_GRADE
    ]
    await finished_runs(web, 1)
    await upload(web, partial)
    clean, run = await finished_runs(web, 2)  # last night's run: partly applied
    assert run.state == "done" and run.result is not None and run.result.errors == 3
    run_path = f"/districts/{SPR}/runs/{run.run_id}"

    await step(browser.sign_in, SPR, SFTP_PASSWORD)
    assert "Springfield Public Schools" in await step(browser.heading)
    sign_out = await step(browser.css, "header nav form button")
    assert (await step(lambda: sign_out.text)) == f"Sign out {SPR}"
    runs = await step(browser.table, "runs")
    assert [cells[:2] for cells in runs] == [[run.run_id, "done"], [clean.run_id, "done"]]
    await step(browser.screenshot, "district")
    phone, page_width, wide = await step(browser.phone_screenshots, "district-phone")
    print(f"district page on a {PHONE[0]} px wide phone: {page_width} px wide; {wide or ''}")

    # The latest run, from the district's list of runs.
    link = await step(browser.css, f"table#runs a[href='{run_path}']")
    await step(browser.follow, link, run_path)
    assert (await step(browser.heading)) == f"Run {run.run_id}"
    rejected = await step(browser.table, "rejected")
    assert sorted(cells[1] for cells in rejected) == [
        "INVALID_GRADE",
        "INVALID_GRADE",
        "INVALID_STATUS",
    ]

    # Filter by one error code: the form's GET, as a person submits it.
    def choose(code: str) -> None:
        Select(browser.css("select[name=code]")).select_by_value(code)
        browser.follow(browser.css("form.filter button[type=submit]"), f"{run_path}?code={code}")

    await step(choose, "INVALID_GRADE")
    rejected = await step(browser.table, "rejected")
    assert [cells[1] for cells in rejected] == ["INVALID_GRADE", "INVALID_GRADE"]
    assert sorted(cells[3].split(", ")[1] for cells in rejected) == ["S10", "S7"]
    chosen = await step(lambda: Select(browser.css("select[name=code]")).first_selected_option)
    assert (await step(chosen.get_attribute, "value")) == "INVALID_GRADE"
    fixes = await step(browser.css, "dl.fixes")
    assert "INVALID_STATUS" not in (await step(lambda: fixes.text))
    await step(browser.screenshot, "run")

    # errors.csv, through its link on the run page, into the download folder.
    name = f"{run.run_id}.errors.csv"
    download = await step(browser.css, f"a[href='{run_path}/files/{name}']")
    await step(download.click)
    errors_csv = await step(browser.downloaded, name)
    text = errors_csv.read_text(encoding="utf-8-sig")
    assert text.startswith("Line,Error Code,Message,")
    assert "INVALID_GRADE" in text and "INVALID_STATUS" in text

    no_student_password([*browser.sources, text], partial)
    assert all(shot.is_file() for shot in phone)


async def test_an_operator_approves_a_held_run_and_finds_it_in_the_audit_log(
    web: WebHandle, browser: Browser
) -> None:
    roster = [student(f"S{n:03d}") for n in range(40)]
    await upload(web, roster)
    await finished_runs(web, 1)
    await upload(web, [student(f"S{n:03d}", "D") for n in range(30)])  # over the guard
    _, held = await finished_runs(web, 2)
    assert held.state == "held"
    district_path, run_path = f"/districts/{SPR}", f"/districts/{SPR}/runs/{held.run_id}"

    await step(browser.sign_in, OPERATOR, OPERATOR_PASSWORD)
    assert (await step(browser.heading)) == "Districts"
    attention = await step(browser.css, "a[href^='/?filter=attention']")
    await step(browser.follow, attention, "/?filter=attention&sort=district")
    (row,) = await step(browser.table, "districts")
    assert row[0].startswith("Springfield Public Schools") and row[3] == "1"

    link = await step(browser.css, f"table#districts a[href='{district_path}']")
    await step(browser.follow, link, district_path)
    held_text = await step(lambda: browser.css("section.held").text)
    assert held.run_id in held_text
    await step(browser.screenshot, "operator-district-held")

    approve = await step(browser.css, f"form[action='{run_path}/approve'] button")
    await step(browser.follow, approve, run_path)
    assert (await step(lambda: browser.css("p.state").text)) == "done"
    updated = await step(
        lambda: browser.css("table.counts").find_element(By.XPATH, ".//tr[th='Updated']/td").text
    )
    assert "deactivated 30" in updated
    await step(browser.screenshot, "operator-run-approved")

    # Applied: the district's enterprise order now counts the 10 still active.
    back = await step(browser.css, f"main a[href='{district_path}']")
    await step(browser.follow, back, district_path)
    assert not await step(lambda: browser.driver.find_elements(By.CSS_SELECTOR, "section.held"))
    licenses = await step(
        lambda: [
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in browser.driver.find_elements(By.XPATH, "//section[h2='Licenses']//tbody/tr")
        ]
    )
    enterprise = next(cells for cells in licenses if cells[0] == ORDERS[SPR][0])
    assert enterprise[3] == "10", licenses

    audit_link = await step(browser.css, "header nav a[href='/audit']")
    await step(browser.follow, audit_link, "/audit")
    entries = await step(browser.table, "audit")
    approvals = [cells for cells in entries if cells[2] == "approve"]
    assert len(approvals) == 1, entries
    _, who, _, district, detail, address = approvals[0]
    assert (who, district, detail, address) == (OPERATOR, SPR, held.run_id, "127.0.0.1")
    assert any(cells[1] == OPERATOR and cells[2] == "sign-in" for cells in entries)
    await step(browser.screenshot, "audit")

    record = await web.app.store.get_run(SPR, held.run_id)
    assert record.state == "done"
    no_student_password(browser.sources, roster)
