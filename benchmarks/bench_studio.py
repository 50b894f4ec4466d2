"""headstart studio in headless Chromium: retrain time after adding webcam frames, and tab memory at 20,000 images.

    python benchmarks/bench_studio.py [--work_dir DIR] [--json out.json]

1. **Retrain after 20 webcam frames.** A 3,000-image project (Fashion-MNIST,
   300 per class) is trained once from the page (this computes and caches every
   bottleneck), then 20 frames are taken with the page's Snapshot button
   through Chromium's fake camera (640x480 JPEGs, into a new class) and Train
   is clicked again.  Measured: click to the new test accuracy on the page,
   with the server's own breakdown.  Then the studio is restarted (the network
   is no longer loaded), 20 more frames are taken and the time measured again.
2. **A 20,000-image project** (Fashion-MNIST, 2,000 per class) is opened; one
   class is scrolled from top to bottom until every thumbnail has loaded, and
   every other class is opened and jumped to its end.  Measured: Chromium's JS
   heap (CDP ``Performance.getMetrics``, ``performance.memory``), the tab's
   renderer process memory (RSS and USS, psutil), DOM nodes and ``<img>``
   elements in the page.

Everything runs on 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        "--enable-precise-memory-info"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def open_page(browser: Any, url: str) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.grant_permissions(["camera"])
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    return page


def click_train(page: Any, project: str, steps: int, timeout_s: float) -> dict[str, Any]:
    """Click Train; seconds until the new accuracy is on the page, and the server's event times."""
    page.goto(f"{page.url.split('#')[0]}#/{project}/train")
    page.locator(".view-train").wait_for()
    page.get_by_label("how many training steps").fill(str(steps))
    previous = page.evaluate("(document.querySelector('.result-card') || {dataset: {}}).dataset.run || ''")
    start = time.perf_counter()
    page.locator("#train-button").click()
    page.wait_for_function("""(previous) => {
        const card = document.querySelector(".result-card");
        return card && card.dataset.run !== previous && document.querySelector("#result-accuracy");
    }""", arg=previous, timeout=timeout_s * 1000, polling="raf")
    seconds = time.perf_counter() - start
    accuracy = page.locator("#result-accuracy").inner_text()
    run = page.locator(".result-card").get_attribute("data-run")
    page.locator("#train-phase", has_text="Done").wait_for(timeout=timeout_s * 1000)
    return {"click_to_accuracy_s": round(seconds, 3), "accuracy": accuracy.replace("\u00a0", " "), "run": run}


def job_breakdown(url: str, project: str) -> dict[str, Any]:
    import httpx

    job = httpx.get(f"{url}/api/projects/{project}", timeout=30).json()["job"]
    events = httpx.get(f"{url}/api/projects/{project}/jobs/{job['id']}", timeout=30).json()["log"]
    out: dict[str, Any] = {}
    for e in events:
        if e["type"] == "phase":
            out[f"{e['phase']}_started_s"] = e["t"]
        if e["type"] == "bottlenecks" and e.get("done", 0) == 0:
            out["bottlenecks"] = {"total": e["total"], "cached": e["cached"], "missing": e["missing"],
                                  "network_loaded": e.get("warm")}
        if e["type"] == "result":
            out["result_s"] = e["t"]
            out["computed"] = e.get("computed")
    return out


def take_frames(page: Any, project: str, cls: str, n: int, settle_ms: int = 0) -> None:
    """``n`` Snapshot clicks; ``settle_ms`` first lets the fake camera's clock run past frames taken before
    (its picture is a function of time since the stream started, and a repeated frame is a duplicate)."""
    page.goto(f"{page.url.split('#')[0]}#/{project}/collect")
    page.locator(".view-collect").wait_for()
    if not page.locator(".class-item", has_text=cls).count():
        page.get_by_label("New class").fill(cls)
        page.get_by_role("button", name="Add class").click()
    else:
        page.locator(".class-item", has_text=cls).click()
    page.locator(".class-view h2", has_text=cls).wait_for()
    if page.get_by_role("button", name="Start camera").count():
        page.get_by_role("button", name="Start camera").click()
    page.wait_for_function("() => (document.querySelector('.camera-box video') || {}).videoWidth > 0")
    page.wait_for_timeout(settle_ms)
    status = page.locator(".upload-status")
    for i in range(n):
        page.get_by_role("button", name="Snapshot").click()
        status.filter(has_text=f"{i + 1} camera frame").wait_for()
        page.wait_for_timeout(60)  # a new frame of the fake camera, so each snapshot differs


def retrain_benchmark(browser: Any, work: Path, cache: Path, frames: int, steps: int, per_class: int) -> dict[str, Any]:
    from headstart.datasets import write_fashion_mnist
    from headstart.studio.server import StudioThread

    data = work / "data"
    write_fashion_mnist(data / "fashion3k", per_class=per_class)
    result: dict[str, Any] = {"images": 10 * per_class, "frames": frames, "steps": steps}
    with StudioThread(data, cache_dir=cache) as studio:
        page = open_page(browser, studio.url)
        log("first training (computes and caches every bottleneck)")
        result["first"] = {**click_train(page, "fashion3k", steps, 1800), **job_breakdown(studio.url, "fashion3k")}
        log(f"first: {result['first']}")
        start = time.perf_counter()
        take_frames(page, "fashion3k", "webcam", frames)
        result["frames_s"] = round(time.perf_counter() - start, 2)
        log(f"{frames} frames taken in {result['frames_s']} s; training again")
        result["after_frames"] = {**click_train(page, "fashion3k", steps, 600),
                                  **job_breakdown(studio.url, "fashion3k")}
        log(f"after frames: {result['after_frames']}")
        page.context.close()
    with StudioThread(data, cache_dir=cache) as studio:  # a fresh studio: the network is loaded again
        page = open_page(browser, studio.url)
        take_frames(page, "fashion3k", "webcam", frames, settle_ms=int(result["frames_s"] * 1000) + 2000)
        result["after_frames_fresh_studio"] = {**click_train(page, "fashion3k", steps, 600),
                                               **job_breakdown(studio.url, "fashion3k")}
        log(f"fresh studio: {result['after_frames_fresh_studio']}")
        page.context.close()
    return result


def renderer_memory(browser_pid: int | None) -> dict[str, float]:
    """The biggest Chromium renderer process (the studio's tab): RSS and USS in MB."""
    import psutil

    best: dict[str, float] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if not cmd or "chromium" not in cmd[0] or "--type=renderer" not in cmd:
            continue
        try:
            info = proc.memory_full_info()
        except (psutil.Error, OSError):
            continue
        if info.rss > best.get("rss_bytes", 0):
            best = {"rss_bytes": info.rss, "uss_bytes": getattr(info, "uss", 0), "pid": proc.pid}
    return {"renderer_rss_mb": round(best.get("rss_bytes", 0) / 1e6, 1),
            "renderer_uss_mb": round(best.get("uss_bytes", 0) / 1e6, 1)}


def page_memory(page: Any, cdp: Any) -> dict[str, Any]:
    cdp.send("HeapProfiler.collectGarbage")
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    perf = page.evaluate("performance.memory ? {used: performance.memory.usedJSHeapSize} : null")
    dom = page.evaluate("({nodes: document.getElementsByTagName('*').length, images: document.images.length})")
    return {"js_heap_used_mb": round(metrics.get("JSHeapUsedSize", 0) / 1e6, 1),
            "js_heap_total_mb": round(metrics.get("JSHeapTotalSize", 0) / 1e6, 1),
            "performance_memory_used_mb": round(perf["used"] / 1e6, 1) if perf else None,
            "dom_nodes": int(metrics.get("Nodes", dom["nodes"])), "img_elements": dom["images"],
            **renderer_memory(None)}


def scroll_class(page: Any, step_timeout_ms: int = 5000, max_steps: int = 200) -> int:
    """Scroll the grid a screen at a time to the bottom, waiting for the thumbnails on screen."""
    steps = 0
    while steps < max_steps:
        page.wait_for_function("""() => {
            const cells = [...document.querySelectorAll('.vcell')];
            return cells.length > 0 && cells.every((c) => !c.classList.contains('loading')
                && c.querySelector('img').complete);
        }""", timeout=step_timeout_ms, polling=100)
        done = page.evaluate("""() => {
            const g = document.querySelector('.vgrid');
            if (g.scrollTop + g.clientHeight >= g.scrollHeight - 2) return true;
            g.scrollTop += g.clientHeight;
            return false;
        }""")
        steps += 1
        if done:
            break
    return steps


def class_button(page: Any, name: str) -> Any:
    return page.locator(".class-item", has=page.locator(".class-name", has_text=re.compile(f"^{re.escape(name)}$")))


def memory_benchmark(browser: Any, work: Path, cache: Path, per_class: int) -> dict[str, Any]:
    from headstart.datasets import write_fashion_mnist
    from headstart.studio.server import StudioThread

    data = work / "data-big"
    log(f"writing {10 * per_class} Fashion-MNIST images")
    write_fashion_mnist(data / "fashion20k", per_class=per_class)
    with StudioThread(data, cache_dir=cache) as studio:
        page = open_page(browser, f"{studio.url}/#/fashion20k/collect")
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        page.locator(".class-item").first.wait_for()
        names = page.locator(".class-item .class-name").all_inner_texts()
        total = sum(int(t.replace(",", "")) for t in page.locator(".class-item .count").all_inner_texts())
        opened = page_memory(page, cdp)
        log(f"opened {total} images in {len(names)} classes: {opened}")
        start = time.perf_counter()
        class_button(page, names[0]).click()
        screens = scroll_class(page)
        scrolled_s = time.perf_counter() - start
        after_one = page_memory(page, cdp)
        log(f"scrolled {names[0]} in {screens} screens ({scrolled_s:.1f} s): {after_one}")
        for name in names[1:]:
            class_button(page, name).click()
            page.locator(".class-view h2", has_text=re.compile(f"^{re.escape(name)}$")).wait_for()
            page.evaluate("document.querySelector('.vgrid').scrollTop = 1e9")
            page.wait_for_timeout(300)
        class_button(page, names[0]).click()
        page.wait_for_timeout(1000)
        after_all = page_memory(page, cdp)
        log(f"after every class: {after_all}")
        page.context.close()
    return {"images": total, "classes": len(names), "opened": opened,
            "after_scrolling_one_class": {**after_one, "class": names[0], "screens": screens,
                                          "seconds": round(scrolled_s, 1)},
            "after_every_class": after_all}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/headstart-bench-studio"))
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1000, help="training steps (the default of retrain)")
    parser.add_argument("--small_per_class", type=int, default=300)
    parser.add_argument("--big_per_class", type=int, default=2000)
    parser.add_argument("--skip_retrain", action="store_true")
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import shutil

    from playwright.sync_api import sync_playwright

    work = args.work_dir
    cache = work / "cache"
    for sub in ("data", "data-big", "cache"):  # every run starts cold: the first training computes everything
        shutil.rmtree(work / sub, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"cpu_count": os.cpu_count()}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        out["chromium"] = browser.version
        if not args.skip_retrain:
            out["retrain"] = retrain_benchmark(browser, work, cache, args.frames, args.steps, args.small_per_class)
        if not args.skip_memory:
            out["memory"] = memory_benchmark(browser, work, cache, args.big_per_class)
        browser.close()
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
