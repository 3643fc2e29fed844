"""The operators' page in a real browser: Debian's chromium, driven by Playwright, on a page
served by `lineside ui` beside a real running line."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need_peer
from tests.edge.uihelp import logs_of, start_line_and_ui, stop_line, wait_for_first_decisions

pytestmark = pytest.mark.slow

#: set LINESIDE_UI_SCREENSHOT=PATH to keep the screenshot there too (docs/ui.png is made so)
SCREENSHOT_ENV = "LINESIDE_UI_SCREENSHOT"
DECISIONS = ("PASS", "FAIL", "NO_DECISION")


def chromium_path() -> str:
    """Debian's chromium (Playwright's own browser download cannot be used everywhere)."""
    if importlib.util.find_spec("playwright") is None:
        need_peer("playwright is not installed (pip install playwright; the dev extra has it)")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        need_peer("chromium is not installed (apt-get install chromium; .ci/run does)")
    return str(path)


def total(page: Any) -> int:
    return sum(int(page.text_content(f"#start-{d}")) for d in DECISIONS)


def history_rows(page: Any) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        "#history tbody tr.row",
        "rows => rows.map(r => ({camera: r.dataset.camera, decision: r.dataset.decision}))",
    )


def search(page: Any, camera: str, decision: str) -> int:
    """Set the history filters, search, and return the total the page reports."""
    before = page.get_attribute("#h-page", "data-total")
    page.select_option("#h-camera", camera)
    page.select_option("#h-decision", decision)
    page.evaluate("document.getElementById('h-page').dataset.total = 'pending'")
    page.click("#h-search")
    page.wait_for_function("document.getElementById('h-page').dataset.total !== 'pending'", timeout=10000)
    assert before is not None
    return int(page.get_attribute("#h-page", "data-total"))


def test_the_page_updates_live_and_the_history_filters(trained_package: Path, tmp_path: Path) -> None:
    browser_path = chromium_path()
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    # with CURVE keys: the UI subscribes to the line's publish socket as an authorized client
    daemon, ui = start_line_and_ui(tmp_path, trained_package, curve=True)
    errors: list[str] = []
    try:
        # the page is checked against a line that decides: its start is waited for apart
        wait_for_first_decisions(daemon, ui)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(ui.url + "/", timeout=15000)
                # the live part: counts and each camera's latest decision come by Server-Sent Events
                page.wait_for_function(
                    "Number(document.getElementById('start-PASS').textContent) + "
                    "Number(document.getElementById('start-FAIL').textContent) > 0",
                    timeout=40000,
                )
                page.wait_for_selector("#cam-cam1 .decision[data-key]", timeout=20000)
                first_total = total(page)
                first_key = page.get_attribute("#cam-cam1 .decision", "data-key")
                page.wait_for_function(
                    f"Number(document.getElementById('start-PASS').textContent) + "
                    f"Number(document.getElementById('start-FAIL').textContent) + "
                    f"Number(document.getElementById('start-NO_DECISION').textContent) > {first_total}",
                    timeout=20000,
                )
                page.wait_for_function(
                    "document.querySelector('#cam-cam1 .decision').dataset.key !== " + repr(first_key),
                    timeout=20000,
                )
                assert total(page) > first_total
                assert page.text_content("#line-name") == "uitest"
                assert page.text_content("#line-state") == "line running"
                page.wait_for_function(
                    "document.getElementById('ready').textContent === 'ready'", timeout=20000
                )
                assert page.text_content("#p50").endswith(" ms") and page.text_content("#p50") != "– ms"
                # the camera image loaded (the mask overlay PNG)
                page.wait_for_function(
                    "document.querySelector('#cam-cam1 img').naturalWidth > 0", timeout=10000
                )

                # the history: everything, then one camera, then one decision
                page.wait_for_function("Number(document.getElementById('h-page').dataset.total) >= 0")
                everything = search(page, "", "")
                assert everything > 0 and len(history_rows(page)) == min(everything, 25)
                cam2 = search(page, "cam2", "")
                assert 0 < cam2 < search(page, "", "")
                search(page, "cam2", "")
                assert {r["camera"] for r in history_rows(page)} == {"cam2"}
                fails = search(page, "", "FAIL")
                rows = history_rows(page)
                assert fails > 0 and rows and {r["decision"] for r in rows} == {"FAIL"}
                # the NG gallery shows image and mask of kept NG parts
                page.click("#ng-refresh")
                page.wait_for_selector("#gallery .ng img", timeout=20000)
                page.wait_for_function(
                    "[...document.querySelectorAll('#gallery .ng img')]"
                    ".every(i => i.complete && i.naturalWidth > 0)",
                    timeout=10000,
                )
                search(page, "", "")
                # for the screenshot only: a moment when a camera shows a FAIL over its frame
                with contextlib.suppress(PlaywrightTimeout):
                    page.wait_for_selector(".camera .decision.FAIL", timeout=5000)
                    page.wait_for_timeout(800)
                shot = tmp_path / "ui.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                if os.environ.get(SCREENSHOT_ENV):
                    shutil.copy(shot, os.environ[SCREENSHOT_ENV])
            except (AssertionError, PlaywrightTimeout) as err:
                # what the line and the UI said is what tells a slow start from a page that stalled
                raise AssertionError(f"{err}\n{logs_of(daemon, ui)}") from err
            finally:
                browser.close()
    finally:
        ui.stop()
        stop_line(daemon)
    assert not errors, errors
