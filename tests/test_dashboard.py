"""The store's dashboard in a real headless browser: Playwright driving Debian's chromium
against a real store and worker with tiny models.

Set MODEL_SWAP_SCREENSHOT=path to write the screenshot in docs/observability.md while the test runs.
"""

from __future__ import annotations

import os
import shutil

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from tests.conftest import A, B, C, ask

KEY = "dashboard-test-key-0123456789"
WAIT_MS = 15_000

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dashboard")]  # one browser


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        message = "needs Debian's chromium (apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"the dashboard test {message}; .ci/run installs it")
        pytest.skip(f"dashboard browser test {message}")
    with sync_playwright() as playwright:
        # --no-sandbox: chromium's sandbox cannot start as root (CI containers run as root).
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


def model_row(page, name):
    return page.locator(f"#models tbody tr[data-model='{name}']")


def test_the_dashboard_shows_the_swaps_as_they_happen(browser, worker, start_store):
    store = start_store(worker, cache_policy="lru", max_cache_size=2)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(store.url)
    expect(page.locator("#models tbody tr")).to_have_count(3, timeout=WAIT_MS)
    for name in (A, B, C):
        expect(model_row(page, name)).to_have_attribute("data-state", "available")
    # Buttons follow the model's state: nothing to unload or evict on a model only available.
    ops = model_row(page, A).locator("button")
    expect(ops).to_have_count(2)
    assert [ops.nth(i).get_attribute("data-op") for i in range(2)] == ["load", "pin"]

    assert ask(store, A).status_code == 200
    loaded = page.locator(f"#requests tbody tr[data-model='{A}'][data-action='load_from_store']")
    expect(loaded).to_have_count(1, timeout=WAIT_MS)
    expect(model_row(page, A)).to_have_attribute("data-state", "resident", timeout=WAIT_MS)

    assert ask(store, A).status_code == 200
    expect(
        page.locator(f"#requests tbody tr[data-model='{A}'][data-action='already_loaded']")
    ).to_have_count(1, timeout=WAIT_MS)
    assert ask(store, B).status_code == 200
    assert ask(store, C).status_code == 200
    # C's push evicted A: the request row says so, and A is back to available.
    c_row = page.locator(f"#requests tbody tr[data-model='{C}'][data-action='load_from_store']")
    expect(c_row).to_contain_text(f"−{A}", timeout=WAIT_MS)
    expect(model_row(page, A)).to_have_attribute("data-state", "available", timeout=WAIT_MS)
    expect(model_row(page, C)).to_have_attribute("data-state", "resident")
    expect(page.locator("#hit-ratio")).to_have_text("25%", timeout=WAIT_MS)
    expect(page.locator(".bar.models[data-tier='cache']")).to_contain_text("2 / 2")

    # The buttons call /models/...: pin C, then unload it (its file stays cached).
    model_row(page, C).locator("button[data-op='pin']").click()
    expect(model_row(page, C)).to_contain_text("pinned", timeout=WAIT_MS)
    if os.environ.get("MODEL_SWAP_SCREENSHOT"):
        page.screenshot(path=os.environ["MODEL_SWAP_SCREENSHOT"], full_page=True)
    expect(model_row(page, C).locator("button[data-op='load']")).to_have_count(0)
    model_row(page, C).locator("button[data-op='unload']").click()
    expect(model_row(page, C)).to_have_attribute("data-state", "cached", timeout=WAIT_MS)
    expect(model_row(page, C).locator("button[data-op='unload']")).to_have_count(0)
    expect(model_row(page, C).locator("button[data-op='evict']")).to_have_count(1)
    status = requests.get(f"{store.url}/status", timeout=10).json()
    assert status["resident"] == [] and {e["name"] for e in status["cached"]} == {B, C}
    page.close()


def test_the_dashboard_asks_for_the_key_when_the_store_needs_one(browser, worker, start_store):
    store = start_store(worker, api_keys=(KEY,))
    page = browser.new_page()
    page.goto(store.url)  # the page itself is served without a key
    expect(page.locator("#auth")).to_be_visible(timeout=WAIT_MS)
    page.fill("#key", KEY)
    page.click("#save-key")
    expect(page.locator("#models tbody tr")).to_have_count(3, timeout=WAIT_MS)
    expect(page.locator("#auth")).to_be_hidden()
    page.close()


def test_the_dashboard_shows_each_worker_and_drains_one(
    browser, start_worker, start_store, tmp_path
):
    workers = [start_worker(model_cache_dir=tmp_path / f"cache-{i}") for i in range(2)]
    store = start_store(worker_urls=tuple(w.url for w in workers))
    ids = [w.url.removeprefix("http://") for w in workers]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(store.url)
    rows = page.locator("#workers tbody tr")
    expect(rows).to_have_count(2, timeout=WAIT_MS)
    expect(page.locator("#worker")).to_have_text("2 of 2 workers healthy")
    assert ask(store, A).status_code == 200
    first = page.locator(f"#workers tbody tr[data-worker='{ids[0]}']")
    expect(first).to_contain_text(A, timeout=WAIT_MS)
    first.locator("button").click()
    expect(first).to_contain_text("draining", timeout=WAIT_MS)
    status = requests.get(f"{store.url}/status", timeout=10).json()
    assert status["workers"][0]["state"] == "draining"
    assert ask(store, A).headers["X-Worker"] == workers[1].url
    first.locator("button").click()
    expect(first).to_contain_text("healthy", timeout=WAIT_MS)
    page.close()


def test_the_first_render_needs_no_poll(browser, worker, start_store):
    store = start_store(worker)
    assert ask(store, A).status_code == 200
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    # Every poll fails: what the page shows comes from the data it was served with.
    page.route("**/status", lambda route: route.abort())
    page.route("**/activity", lambda route: route.abort())
    page.route("**/v1/models", lambda route: route.abort())
    page.goto(store.url)
    expect(page.locator("#models tbody tr")).to_have_count(3)
    expect(model_row(page, A)).to_have_attribute("data-state", "resident")
    expect(page.locator(f"#requests tbody tr[data-model='{A}']")).to_have_count(1)
    page.close()


def test_the_page_carries_no_data_when_the_store_needs_a_key(worker, start_store):
    open_store = start_store(worker)
    assert 'id="initial-data"' in requests.get(open_store.url, timeout=10).text
    locked = start_store(worker, api_keys=(KEY,))
    page = requests.get(locked.url, timeout=10)
    assert page.status_code == 200 and 'id="initial-data"' not in page.text
