"""headstart studio end to end: the real app in headless Chromium and Firefox (Debian's), driven with Playwright.

A new user's loop: create a project, add real photos (files and a folder of
class folders), take webcam snapshots and hold-to-record frames through
the browser's fake camera, train, see the accuracy, move a mislabelled image,
retrain, label a dropped image, watch live predictions, download an export
and run it with ``headstart.load_model``; and try to break it with bad
uploads and names.  Screenshots at 1280x800 and 390x844 go to
``$HEADSTART_SCREENSHOTS`` (or the test's temporary folder), printed at the end.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

sync_api = pytest.importorskip("playwright.sync_api")
# Debian's browsers: nothing can be downloaded here, so Playwright is pointed at their executables.
EXECUTABLES = {"chromium": "/usr/bin/chromium", "firefox": "/usr/bin/firefox-esr"}
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
# Firefox's fake camera, and no permission prompt (what Chromium's two flags above do).
FIREFOX_PREFS = {"media.navigator.streams.fake": True, "media.navigator.permission.disabled": True}
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
TIMEOUT_MS = int(os.environ.get("HEADSTART_E2E_TIMEOUT_MS", 300_000))  # a first training run computes every bottleneck on 2 CPU cores


def crop_bytes(name: str, seed: int, size: int = 160) -> bytes:
    import skimage.data

    photo = getattr(skimage.data, name)()
    rng = np.random.default_rng(seed)
    h, w = photo.shape[:2]
    s = int(min(h, w) * rng.uniform(0.55, 0.95))
    y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    buf = io.BytesIO()
    Image.fromarray(photo[y:y + s, x:x + s]).resize((size, size)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_crops(folder: Path, name: str, seeds: range) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in seeds:
        path = folder / f"{name}-{seed}.jpg"
        path.write_bytes(crop_bytes(name, seed))
        out.append(path)
    return out


def planted_mislabel(label: str, photo: str) -> tuple[int, bytes]:
    """A crop of ``photo`` that, stored in class ``label`` under its content name, lands in the test split."""
    from headstart.data import which_split

    for seed in range(1000, 3000):
        data = crop_bytes(photo, seed)
        rel = f"{label}/{hashlib.sha256(data).hexdigest()[:16]}.jpg"
        if which_split(rel, 10, 10) == "testing":
            return seed, data
    raise AssertionError("no crop lands in the test split")


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory, browser_name: str) -> Iterator[Path]:
    root = os.environ.get("HEADSTART_SCREENSHOTS")
    folder = Path(root) / browser_name if root else tmp_path_factory.mktemp(f"screenshots-{browser_name}")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    print(f"\nstudio screenshots: {folder}")


@pytest.fixture(scope="module", params=sorted(EXECUTABLES))
def browser_name(request: pytest.FixtureRequest) -> str:
    if not Path(EXECUTABLES[request.param]).exists():  # pragma: no cover - CI installs both
        pytest.skip(f"needs Debian's {request.param} at {EXECUTABLES[request.param]}")
    return str(request.param)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path, browser_name: str) -> Iterator[Any]:
    """A fresh studio for each browser, so each starts from an empty data folder."""
    from headstart.studio.server import StudioThread

    with StudioThread(tmp_path_factory.mktemp(f"studio-{browser_name}") / "data", cache_dir=shared_cache_dir) as studio:
        yield studio


@pytest.fixture(scope="module")
def browser(browser_name: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        if browser_name == "firefox":  # Playwright drives a stock Firefox over WebDriver BiDi ("moz-" channels)
            b = p.firefox.launch(channel="moz-firefox", executable_path=EXECUTABLES["firefox"],
                                 firefox_user_prefs=FIREFOX_PREFS)
        else:
            b = p.chromium.launch(executable_path=EXECUTABLES["chromium"], args=ARGS)
        yield b
        b.close()


def new_page(browser: Any, size: str = "desktop", **options: Any) -> Any:
    w, h = SIZES[size]
    context = browser.new_context(viewport={"width": w, "height": h}, accept_downloads=True, **options)
    context.grant_permissions(["camera"])
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text
            else None)
    page.errors = errors  # type: ignore[attr-defined]
    return page


UNLABELLED = """() => {
    const bad = [];
    for (const el of document.querySelectorAll("button, input, select, textarea, [role=tab], [role=listbox]")) {
        if (el.getAttribute("aria-hidden") === "true") continue;  // a file input behind its labelled button
        if (!el.getClientRects().length) continue;  // not displayed
        let name = el.getAttribute("aria-label") || "";
        if (!name && el.labels) name = [...el.labels].map((l) => l.textContent).join(" ");
        if (!name && el.tagName === "BUTTON") name = el.textContent;
        if (!name.trim()) bad.push(el.outerHTML.slice(0, 160));
    }
    return bad;
}"""


def shoot(page: Any, shots: Path, name: str) -> None:
    """The window as the user sees it, and the whole page (what is below the fold must not overlap either).

    Every control on screen must have a name a screen reader can say (a label, its text, or aria-label).
    """
    assert not page.evaluate(UNLABELLED), page.evaluate(UNLABELLED)
    page.wait_for_timeout(300)  # let thumbnails and transitions settle
    before = len(page.errors)
    page.screenshot(path=str(shots / f"{name}.png"))
    y = page.evaluate("window.scrollY")
    page.evaluate("window.scrollTo(0, 0)")  # a sticky header is drawn where it is: at the top for the full page
    page.screenshot(path=str(shots / f"{name}-full.png"), full_page=True)
    page.evaluate(f"window.scrollTo(0, {y})")
    # Firefox reports the <style> Playwright adds to the page to take a screenshot as a breach of the studio's
    # CSP (style-src 'self'); the page itself is not at fault, so those two reports are dropped.
    page.errors[before:] = [e for e in page.errors[before:] if "blocked an inline style" not in e]


def assert_no_overflow(page: Any) -> None:
    """Nothing sticks out sideways: the page is as wide as the window (no clipped panels)."""
    width = page.evaluate("document.documentElement.scrollWidth")
    window = page.viewport_size["width"]
    assert width <= window + 1, f"page is {width}px wide in a {window}px window"


def class_count(page: Any, name: str) -> int:
    text = page.locator(".class-item", has=page.locator(".class-name", has_text=name)).locator(".count").inner_text()
    return int(text.replace(",", ""))


def add_class(page: Any, name: str) -> None:
    page.get_by_label("New class").fill(name)
    page.get_by_role("button", name="Add class").click()


def drop_file(page: Any, selector: str, data: bytes, name: str, mime: str = "image/jpeg") -> None:
    """A real drop event with a file on it, as the browser makes when a file is dragged from the desktop."""
    page.evaluate("""([selector, b64, name, mime]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, { type: mime }));
        const target = document.querySelector(selector);
        for (const type of ["dragenter", "dragover", "drop"]) {
            target.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
        }
    }""", [selector, base64.b64encode(data).decode(), name, mime])


def train_and_wait(page: Any, steps: int = 300, previous: str | None = None) -> str:
    page.get_by_role("tab", name="Train").click()
    steps_box = page.get_by_label("how many training steps")
    steps_box.clear()  # Firefox's fill() types after what a number box holds instead of replacing it
    steps_box.fill(str(steps))
    page.locator("#train-button").click()
    try:
        page.wait_for_function("""(previous) => {
            const card = document.querySelector(".result-card");
            return card && card.dataset.run !== previous && /Done/.test(document.querySelector("#train-phase").textContent);
        }""", arg=previous or "", timeout=TIMEOUT_MS)
    except sync_api.TimeoutError:  # say where it stopped, not only that it did
        phase = page.locator("#train-phase").all_inner_texts()
        raise AssertionError(f"training did not finish: phase {phase}, page errors {page.errors}") from None
    return page.locator(".result-card").get_attribute("data-run")


@pytest.mark.slow
def test_the_whole_loop(running: Any, browser: Any, browser_name: str, shots: Path, tmp_path: Path) -> None:
    import headstart

    page = new_page(browser)
    page.goto(running.url)
    shoot(page, shots, "desktop-0-home")
    page.get_by_label("Project name").fill("pets")
    page.get_by_role("button", name="Create project").click()
    page.locator(".view-collect").wait_for()

    # A folder of class folders, as a user would pick it: two classes at once.
    tree = tmp_path / "pictures"
    crops = {"cat": write_crops(tree / "cat", "chelsea", range(14)),
             "coffee": write_crops(tree / "coffee", "coffee", range(14))}
    if browser_name == "chromium":
        page.locator(".picker", has_text="Import class folders").locator("input[type=file]").set_input_files(tree)
    else:  # Playwright cannot hand a folder to Firefox's picker over WebDriver BiDi: the same files, class by class
        for cls, files in crops.items():
            add_class(page, cls)
            page.locator(".class-view h2", has_text=cls).wait_for()
            page.locator(".class-view .picker", has_text="Add images").locator("input[type=file]").set_input_files(
                files)
            page.locator(".upload-status", has_text="Added 14 images").wait_for()
    page.locator(".class-item", has_text="coffee").wait_for()
    page.wait_for_function("() => document.querySelectorAll('.class-item').length === 2")
    assert class_count(page, "cat") == 14 and class_count(page, "coffee") == 14

    # A third class from single files, plus a coffee photo planted in "cat" (it lands in the test split).
    add_class(page, "astronaut")
    page.locator(".class-view h2", has_text="astronaut").wait_for()
    page.locator(".class-view .picker", has_text="Add images").locator("input[type=file]").set_input_files(
        write_crops(tmp_path / "astro", "astronaut", range(14)))
    page.locator(".upload-status", has_text="Added 14 images").wait_for()
    _, planted = planted_mislabel("cat", "coffee")
    page.locator(".class-item", has_text="cat").click()
    page.locator(".class-view h2", has_text="cat").wait_for()
    page.locator(".vgrid .vcell img[src]").first.wait_for()
    drop_file(page, ".class-view", planted, "looks-like-a-cat.jpg")
    page.locator(".upload-status", has_text="Added 1 image").wait_for()
    assert class_count(page, "cat") == 15

    # Webcam: two snapshots and about a second of "hold to record" through the fake camera.
    add_class(page, "camera")
    page.locator(".class-view h2", has_text="camera").wait_for()
    page.get_by_role("button", name="Start camera").click()
    page.locator(".camera-box video").wait_for()
    page.wait_for_function("() => (document.querySelector('.camera-box video') || {}).videoWidth > 0")
    page.get_by_role("button", name="Snapshot").click()
    page.locator(".upload-status", has_text="1 camera frame added").wait_for()
    page.wait_for_timeout(300)
    page.get_by_role("button", name="Snapshot").click()
    page.locator(".upload-status", has_text="2 camera frames added").wait_for()
    hold = page.get_by_role("button", name="Hold to record")
    hold.hover()
    page.mouse.down()
    page.wait_for_timeout(1600)
    page.mouse.up()
    page.wait_for_timeout(1000)
    frames = class_count(page, "camera")
    assert frames >= 5, frames  # 2 snapshots + 4 frames a second while held
    shoot(page, shots, "desktop-1-collect")
    assert_no_overflow(page)

    # Keyboard: the grid takes arrows and Space.
    page.locator(".vgrid").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Space")
    page.locator(".selection-bar", has_text="1 selected").wait_for()
    page.keyboard.press("Space")

    # Train, and see the accuracy.
    run1 = train_and_wait(page)
    accuracy = page.locator("#result-accuracy").inner_text()
    assert accuracy.endswith("%") and float(accuracy.split()[0].replace("\u00a0", "")) > 0
    shoot(page, shots, "desktop-2-train")
    assert_no_overflow(page)

    # Inspect: the planted photo is a confident mistake; move it to the class it shows.
    page.get_by_role("button", name="Inspect this run").click()
    page.locator("#inspect-accuracy").wait_for()
    card = page.locator(".image-card", has_text="labelled cat").filter(has_text="predicted coffee").first
    card.wait_for()
    shoot(page, shots, "desktop-3-inspect")
    assert_no_overflow(page)
    page.locator(".matrix .cell.diag:not(:disabled)").first.click()
    page.locator(".cell-panel h3").wait_for()
    # The data doctor finds the planted photo too (out-of-sample probabilities say it is coffee).
    planted_path = f"cat/{hashlib.sha256(planted).hexdigest()[:16]}.jpg"
    page.locator("#doctor-button").click()
    issues = page.locator("h3", has_text="Likely label errors")
    issues.wait_for(timeout=TIMEOUT_MS)
    assert page.locator(f".doctor-body .image-card[data-path='{planted_path}']").count() >= 1
    shoot(page, shots, "desktop-3b-doctor")
    card.get_by_role("button", name="Move to coffee").click()
    card.locator(".fixed-note", has_text="moved to coffee").wait_for()
    assert class_count_api(running, "pets", "cat") == 14 and class_count_api(running, "pets", "coffee") == 15

    # Retrain: a new run; compare the two side by side.
    run2 = train_and_wait(page, previous=run1)
    assert run2 != run1
    page.get_by_role("tab", name="Inspect").click()
    page.locator("#compare-select").select_option(run1)
    page.locator("table.compare-table").wait_for()
    shoot(page, shots, "desktop-4-compare")

    # Try: drop a photo to label it, then live predictions from the camera.
    page.get_by_role("tab", name="Try").click()
    page.locator("#try-drop").wait_for()
    drop_file(page, "#try-drop", crop_bytes("coffee", 4242), "mug.jpg")
    page.locator("#answer-label", has_text="coffee").wait_for()
    assert page.locator(".bars li").count() == 3
    page.get_by_role("button", name="Start live prediction").click()
    page.locator("#live-rate", has_text="predictions a second").wait_for(timeout=60_000)
    shoot(page, shots, "desktop-5-try")
    assert_no_overflow(page)
    page.get_by_role("button", name="Stop live prediction").click()

    # Export: download the zip and run the model in it.
    page.get_by_role("tab", name="Export").click()
    page.locator("#export-button").click()
    page.locator("#download-link").wait_for(timeout=TIMEOUT_MS)
    shoot(page, shots, "desktop-6-export")
    with page.expect_download() as info:
        page.locator("#download-link").click()
    zipped = tmp_path / "export.zip"
    info.value.save_as(zipped)
    with zipfile.ZipFile(zipped) as zf:
        zf.extractall(tmp_path / "unzipped")
    model = headstart.load_model(next((tmp_path / "unzipped").rglob("*.onnx")))
    photo = tmp_path / "test-cat.jpg"
    photo.write_bytes(crop_bytes("chelsea", 777))
    predictions, _ = model.predict_files([photo])
    assert predictions[0].label == "cat" and set(model.labels) == {"astronaut", "camera", "cat", "coffee"}
    assert not page.errors, page.errors  # type: ignore[attr-defined]

    # The same project on a phone.
    phone = new_page(browser, "phone")
    for tab in ("collect", "train", "inspect", "try", "export"):
        phone.goto(f"{running.url}/#/pets/{tab}")
        phone.locator(f".view-{tab}").wait_for()
        if tab == "inspect":
            phone.locator("#inspect-accuracy").wait_for()
        if tab == "train":
            phone.locator("#result-accuracy").wait_for(timeout=60_000)
        shoot(phone, shots, f"phone-{tab}")
        assert_no_overflow(phone)
    phone.goto(running.url)
    phone.locator(".home").wait_for()
    shoot(phone, shots, "phone-home")
    assert not phone.errors, phone.errors  # type: ignore[attr-defined]


def class_count_api(running: Any, project: str, cls: str) -> int:
    import httpx

    classes = httpx.get(f"{running.url}/api/projects/{project}", timeout=30).json()["classes"]
    return next(c["count"] for c in classes if c["name"] == cls)


@pytest.mark.slow
def test_bad_input_in_the_ui_gets_a_message_and_loses_nothing(running: Any, browser: Any, shots: Path,
                                                              tmp_path: Path) -> None:
    page = new_page(browser)
    page.goto(running.url)
    page.get_by_label("Project name").fill("../escape")
    page.get_by_role("button", name="Create project").click()
    page.locator(".toast-error", has_text="may not contain / or \\").wait_for()
    page.get_by_label("Project name").fill("broken")
    page.get_by_role("button", name="Create project").click()
    page.locator(".view-collect").wait_for()

    add_class(page, "cat")
    page.locator(".class-view h2", has_text="cat").wait_for()
    picker = page.locator(".class-view .picker", has_text="Add images").locator("input[type=file]")
    picker.set_input_files(write_crops(tmp_path / "cats", "chelsea", range(3)))
    page.locator(".upload-status", has_text="Added 3 images").wait_for()

    # A text file and a 200 MB file: each gets its own line; the three photos stay.
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(200 * 1000 * 1000)  # sparse: 200 MB without writing them
    picker.set_input_files([notes, huge])
    problems = page.locator(".problems")
    problems.wait_for()
    assert "notes.txt: not an image" in problems.inner_text()
    assert "huge.jpg: too large (200.0 MB); the limit is 50 MB per file" in problems.inner_text()
    shoot(page, shots, "desktop-bad-uploads")
    assert class_count(page, "cat") == 3
    phone = new_page(browser, "phone")
    phone.goto(f"{running.url}/#/broken/collect")
    phone.locator(".class-view h2", has_text="cat").wait_for()
    phone_picker = phone.locator(".class-view .picker", has_text="Add images").locator("input[type=file]")
    phone_picker.set_input_files([notes, huge])
    phone.locator(".problems").wait_for()
    shoot(phone, shots, "phone-bad-uploads")
    assert_no_overflow(phone)
    phone.context.close()

    # Class names that would leave the folder.
    for bad, message in (("../up", "may not contain / or \\"), ("a/b", "may not contain / or \\"),
                         (".hidden", "may not start with a dot"), ("runs", "is reserved")):
        add_class(page, bad)
        page.locator(".toast-error", has_text=message).first.wait_for()
    assert page.locator(".class-item").count() == 1

    # Training with one class.
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-button").click()
    page.locator(".error-box", has_text="training needs at least two classes").wait_for()
    shoot(page, shots, "desktop-one-class")
    data = running.app.state.studio.store.root
    assert [p.name for p in data.parent.iterdir()] == ["data"]  # nothing written next to the data folder
    assert all(".." not in p.name and not p.name.startswith(".") for p in data.iterdir())
    assert sorted(p.name for p in (data / "broken").iterdir() if p.name != ".studio") == ["cat"]
    assert len(list((data / "broken" / "cat").iterdir())) == 3
    huge.unlink()


@pytest.mark.slow
def test_a_second_training_while_one_runs_is_refused_in_the_ui(running: Any, browser: Any, tmp_path: Path) -> None:
    import httpx

    api = httpx.Client(base_url=running.url, timeout=60)
    api.post("/api/projects", json={"name": "twice", "classes": ["cat", "coffee"]})
    for cls, photo in (("cat", "chelsea"), ("coffee", "coffee")):
        files = [("files", (f"{i}.jpg", crop_bytes(photo, 50 + i), "image/jpeg")) for i in range(12)]
        assert api.post(f"/api/projects/twice/classes/{cls}/images", files=files).json()["added"] == 12
    first = api.post("/api/projects/twice/train", json={"how_many_training_steps": 100000, "early_stopping": False})
    assert first.status_code == 202
    page = new_page(browser)
    page.goto(f"{running.url}/#/twice/train")
    page.locator(".view-train").wait_for()
    # The page follows the running job: its Train button is disabled; the API says why a second is refused.
    assert page.locator("#train-button").is_disabled()
    second = api.post("/api/projects/twice/train", json={})
    assert second.status_code == 409 and "already running" in second.json()["error"]
    page.get_by_role("button", name="Cancel").click()
    page.locator("#train-phase", has_text="Cancelled").or_(page.locator("#train-phase", has_text="Done")).wait_for(
        timeout=TIMEOUT_MS)
    assert not page.locator("#train-button").is_disabled()
    shutil.rmtree(running.app.state.studio.store.root / "twice")
