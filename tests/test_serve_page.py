"""The page at ``/`` in a real browser: headless Chromium (Debian's) driven by Playwright."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from test_serve import KEY, expected_proba, holdout, models, serving  # noqa: F401 - fixtures used below

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run",
        # A synthetic camera, allowed without asking: the webcam snapshot runs for real, on its test pattern.
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists() and shutil.which("chromium") is None,
                                 reason="needs Debian's chromium")]


def test_the_page_labels_an_uploaded_image_and_a_snapshot(models, holdout, tmp_path):  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api")
    clf = models["fashion"]
    picks = [holdout[2], holdout[9], holdout[-3]]
    want = [clf.labels[int(expected_proba(clf, p.read_bytes()).argmax())] for _, p in picks]
    assert sum(w == true for w, (true, _) in zip(want, picks)) >= 2  # the model knows these images
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")

    with serving(models, api_key=KEY) as running, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            # The page's Content-Security-Policy forbids eval, so the waits below are selectors, not scripts.
            # The browser's own key dialog answered up front: user name anything, password the key.
            context = browser.new_context(http_credentials={"username": "tester", "password": KEY})
            page = context.new_page()
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(running.url + "/")
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            assert page.input_value("#model") == "fashion"
            assert "10 labels" in page.inner_text("#model-info")

            page.set_input_files("#files", [str(p) for _, p in picks])
            page.locator(".result[data-label]").nth(2).wait_for(timeout=60_000)
            shown = {el.query_selector(".name").inner_text(): el.get_attribute("data-label")
                     for el in page.query_selector_all(".result")}
            assert shown == {p.name: w for (_, p), w in zip(picks, want)}
            first = page.query_selector_all(".result")[0]
            assert len(first.query_selector_all(".bar")) == 5
            assert first.query_selector(".label").inner_text().startswith(first.get_attribute("data-label"))

            page.fill("#top-k", "2")
            page.set_input_files("#files", [str(text)])
            page.wait_for_selector(".result[data-error]", timeout=30_000)
            error = page.inner_text(".result[data-error] .error")
            assert error.startswith("422") and "notes.txt" in error

            page.click("#webcam")
            page.wait_for_selector("#camera[data-live=true]", timeout=30_000)
            page.click("#snap")
            page.locator(".result[data-label]").nth(3).wait_for(timeout=60_000)
            snap = page.query_selector_all(".result")[0]
            assert snap.query_selector(".name").inner_text().startswith("snapshot-")
            assert snap.get_attribute("data-label") in clf.labels
            assert len(snap.query_selector_all(".bar")) == 2
            page.click("#stop-camera")
        finally:
            browser.close()
    assert requested and all(url.startswith(running.url + "/") for url in requested), requested
