"""The operator console in a real browser: Debian's Chromium, headless,
driven by Playwright, against a real 3-worker server."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import requests
from playwright.sync_api import Page, expect, sync_playwright

from conftest import MODELS, output, run_server, v2_body, wait_until

pytestmark = pytest.mark.server

HTML_NAME = "<img src=x onerror=window.pwned=1>"
XGB = "mushroom-xgboost version v0.1.0"
SVM = "mnist-svm version v0.1.0"
WAIT = 20_000  # ms


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Debian's chromium package is needed (.ci/run installs it)"
    return found


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium(), headless=True,
                                     args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def with_extra_models(tmp: Path) -> Path:
    models = tmp / "models"
    shutil.copytree(MODELS, models, ignore=shutil.ignore_patterns("*.py"))
    (models / HTML_NAME).mkdir()
    shutil.copy(MODELS / "mnist-svm" / "model.joblib", models / HTML_NAME / "model.joblib")
    (models / "broken").mkdir()
    (models / "broken" / "model.joblib").write_bytes(b"not a pickle at all")
    return models


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    with_extra_models(tmp)
    with run_server(tmp, workers=3, models=None) as s:
        wait_until(lambda: len(s.worker_pids()) == 3, timeout=30)
        yield s


@pytest.fixture
def sent() -> list[str]:
    """Every URL the page asked for."""
    return []


@pytest.fixture
def page(browser, server, sent):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.on("request", lambda r: sent.append(r.url))
    opened = context.new_page()
    opened.goto(server.url + "/")
    yield opened
    context.close()


def row(page: Page, name: str):
    return page.locator("#models tbody tr").filter(
        has=page.locator("td[data-label=Model]", has_text=name))


def cell(page: Page, name: str, column: str):
    return row(page, name).locator(f"td[data-label='{column}']")


def test_the_console_shows_every_model_and_the_deployment(page, server, sent):
    expect(cell(page, SVM, "State")).to_have_text("READY", timeout=WAIT)
    expect(cell(page, XGB, "State")).to_have_text("READY")
    expect(cell(page, XGB, "Platform")).to_have_text("xgboost")
    expect(cell(page, SVM, "Inputs → outputs")).to_contain_text("FP32 [-1, 64]")
    expect(cell(page, SVM, "Source")).to_have_text("mnist-svm")
    expect(cell(page, SVM, "Loaded")).to_contain_text("ago")
    expect(cell(page, "broken", "State")).to_have_text("UNAVAILABLE")
    expect(cell(page, "broken", "Reason")).to_contain_text("load failed")
    expect(page.locator("#ready")).to_have_text("ready")
    expect(page.locator("#workers")).to_have_text("3", timeout=WAIT)
    watcher = requests.get(server.url + "/v2").json()["depot"]["watcher_pid"]
    expect(page.locator("#watcher")).to_have_text(f"process {watcher}")
    expect(page.locator("#store")).to_have_text(f"SQLite in {server.state}")
    expect(page.locator("#refreshed")).not_to_have_text(
        page.locator("#refreshed").text_content(), timeout=WAIT)  # it refreshes itself
    # the page, its script and stylesheet, and its state: nothing from elsewhere
    assert {url.split("?")[0] for url in sent} >= {
        f"{server.url}/", f"{server.url}/console/static/console.js",
        f"{server.url}/console/static/console.css", f"{server.url}/console/state"}
    assert all(url.startswith(server.url + "/") for url in sent), sent


def test_a_plain_deployment_as_the_readme_shows_it(browser, tmp_path):
    """``make serve`` as a user runs it: the bundled models, 2 workers, the
    default kind of state folder. ``make screenshot`` takes the README's
    picture here (DEPOT_SCREENSHOT), after half a minute of traffic."""
    shot = os.environ.get("DEPOT_SCREENSHOT")
    state = Path(tempfile.mkdtemp(prefix="depot-"))
    try:
        with run_server(tmp_path, workers=2, env={"DEPOT_STATE_DIR": str(state)}) as server:
            context = browser.new_context(viewport={"width": 1400, "height": 640})
            page = context.new_page()
            page.goto(server.url + "/")
            expect(cell(page, SVM, "State")).to_have_text("READY", timeout=WAIT)
            expect(cell(page, XGB, "State")).to_have_text("READY")
            expect(page.locator("#workers")).to_have_text("2", timeout=WAIT)
            expect(page.locator("#store")).to_have_text(f"SQLite in {state}")
            assert page.locator("#models tbody tr").count() == 2
            for i in range(300 if shot else 30):
                reply = server.infer("mnist-svm" if i % 3 else "mushroom-xgboost",
                                     v2_body(np.zeros((1 + i % 4, 64 if i % 3 else 126))))
                assert reply.status_code == 200, reply.text
                if shot:
                    page.wait_for_timeout(20 + 80 * (i // 60 % 2))
            expect(cell(page, SVM, "Requests/s")).not_to_have_text("0.0", timeout=WAIT)
            if shot:
                page.screenshot(path=shot, full_page=True)
            context.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_unload_and_load_from_the_console(page, server, digits):
    expect(cell(page, XGB, "State")).to_have_text("READY", timeout=WAIT)
    page.get_by_role("button", name=f"Unload {XGB}").click()
    expect(cell(page, XGB, "State")).to_have_text("UNAVAILABLE", timeout=WAIT)
    expect(cell(page, XGB, "Reason")).to_have_text("unloaded")
    body = json.loads((Path(__file__).parents[1] / "docs" / "mushroom-request.json").read_text())
    reply = requests.post(f"{server.url}/v2/models/mushroom-xgboost/infer", json=body, timeout=10)
    assert reply.status_code == 400 and "unloaded" in reply.json()["error"]
    page.get_by_role("button", name=f"Load {XGB}").click()
    expect(cell(page, XGB, "State")).to_have_text("READY", timeout=WAIT)
    assert requests.post(f"{server.url}/v2/models/mushroom-xgboost/infer", json=body,
                         timeout=10).status_code == 200
    page.get_by_role("button", name=f"Reload {XGB}").click()
    expect(page.locator("#status")).to_have_text(f"Reload {XGB}: done", timeout=WAIT)


def test_a_failed_load_shows_its_reason(page):
    page.get_by_role("button", name="Load broken").click()
    expect(page.locator("#status")).to_contain_text("Load broken failed (400): load failed",
                                                    timeout=WAIT)
    expect(cell(page, "broken", "State")).to_have_text("UNAVAILABLE")


def test_the_rates_move_after_traffic(page, server, digits):
    expect(cell(page, SVM, "Requests/s")).to_have_text("0.0", timeout=WAIT)
    for _ in range(40):
        assert server.infer("mnist-svm", v2_body(digits[:2])).status_code == 200
    expect(cell(page, SVM, "Requests/s")).not_to_have_text("0.0", timeout=WAIT)
    expect(cell(page, SVM, "p50 / p99 ms")).to_have_text(re.compile(r"^[\d.]+ / [\d.]+$"))
    expect(cell(page, SVM, "Rows/s")).not_to_have_text("0.0")
    points = row(page, SVM).locator("svg.spark polyline").get_attribute("points")
    assert points and len(points.split()) >= 1


def test_try_it_returns_the_prediction(page, mnist_model):
    page.get_by_role("button", name=f"Try {SVM}").click()
    body = json.loads(page.get_by_label("Request body (V2 JSON, editable)").input_value())
    assert body["inputs"][0]["shape"] == [1, 64] and set(body["inputs"][0]["data"]) == {0}
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#try-answer")).to_contain_text("200", timeout=WAIT)
    answer = json.loads(page.locator("#try-answer").text_content().split("\n", 1)[1])
    assert answer["outputs"][0]["data"] == mnist_model.predict(np.zeros((1, 64))).tolist()


def test_html_in_a_name_is_shown_as_text(page):
    expect(cell(page, HTML_NAME, "State")).to_have_text("READY", timeout=WAIT)
    expect(cell(page, HTML_NAME, "Model")).to_have_text(HTML_NAME)
    assert page.locator("#models img").count() == 0
    assert page.evaluate("window.pwned") is None


def test_the_filter_and_the_keyboard(page):
    expect(cell(page, SVM, "State")).to_have_text("READY", timeout=WAIT)
    page.get_by_label("Filter").focus()
    page.keyboard.type("xgboost")
    expect(row(page, XGB)).to_be_visible()
    expect(row(page, SVM)).to_be_hidden()
    page.keyboard.press("Tab")  # on to the rows' buttons, in order
    focused = page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert focused == f"Reload {XGB}"


def test_it_fits_a_phone(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        phone = context.new_page()
        phone.goto(server.url + "/console")
        expect(cell(phone, SVM, "State")).to_have_text("READY", timeout=WAIT)
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert cell(phone, SVM, "State").evaluate("e => getComputedStyle(e).display") == "flex"
    finally:
        context.close()


def test_with_an_api_key_the_buttons_need_it(browser, tmp_path):
    shutil.copytree(MODELS, tmp_path / "models", ignore=shutil.ignore_patterns("*.py"))
    with run_server(tmp_path, workers=2, models=None, env={"DEPOT_API_KEY": "s3cret"}) as s:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(s.url + "/")
            expect(cell(page, XGB, "State")).to_have_text("READY", timeout=WAIT)
            expect(page.get_by_role("button", name=f"Unload {XGB}")).to_have_count(0)
            page.get_by_label("Repository calls need DEPOT_API_KEY:").fill("wrong")
            page.get_by_role("button", name="Use key").click()
            expect(page.locator("#status")).to_contain_text("the key was refused (401)",
                                                            timeout=WAIT)
            expect(page.get_by_role("button", name=f"Unload {XGB}")).to_have_count(0)
            page.get_by_label("Repository calls need DEPOT_API_KEY:").fill("s3cret")
            page.get_by_role("button", name="Use key").click()
            page.get_by_role("button", name=f"Unload {XGB}").click()
            expect(cell(page, XGB, "State")).to_have_text("UNAVAILABLE", timeout=WAIT)
            # the JSON API is unchanged: it still wants the key
            assert requests.post(s.url + "/v2/repository/index", timeout=10).status_code == 401
        finally:
            context.close()


def test_the_console_can_be_turned_off(tmp_path):
    with run_server(tmp_path, workers=2, env={"DEPOT_CONSOLE": "false"}) as s:
        for path in ("/", "/console", "/console/state"):
            reply = requests.get(s.url + path, timeout=10)
            assert reply.status_code == 404 and "error" in reply.json()
        assert requests.get(s.url + "/v2", timeout=10).status_code == 200
