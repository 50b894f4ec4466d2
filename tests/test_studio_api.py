"""headstart studio's JSON API, driven directly: FastAPI's TestClient, and a real uvicorn for uploads that stream.

Real photos (crops of scikit-image's samples), the real network and cache,
real training runs.  Bad input must get a readable message and lose nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

BASE = "http://127.0.0.1"
PHOTOS = {"cat": "chelsea", "coffee": "coffee", "astronaut": "astronaut"}


def crops(name: str, n: int, seed: int = 0, size: int = 160) -> list[bytes]:
    """``n`` different JPEG crops of one scikit-image sample photo."""
    import skimage.data

    photo = getattr(skimage.data, name)()
    rng = np.random.default_rng(seed)
    h, w = photo.shape[:2]
    out = []
    for _ in range(n):
        s = int(min(h, w) * rng.uniform(0.55, 0.95))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        buf = io.BytesIO()
        Image.fromarray(photo[y:y + s, x:x + s]).resize((size, size)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def files(label: str, images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{label}-{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]


def client_for(data_dir: Path, cache_dir: Path, **options: Any) -> Any:
    from fastapi.testclient import TestClient

    from headstart.studio import create_studio_app

    return TestClient(create_studio_app(data_dir, cache_dir=cache_dir, **options), base_url=BASE)


def wait_job(c: Any, project: str, job_id: str, timeout: float = 600) -> list[dict[str, Any]]:
    """Every event of a job, read from its server-sent event stream until it ends."""
    events = []
    deadline = time.monotonic() + timeout
    with c.stream("GET", f"/api/projects/{project}/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data:") and line[5:].strip() != "{}":
                events.append(json.loads(line[5:]))
            if line.startswith("event: end") or time.monotonic() > deadline:
                break
    return events


@pytest.fixture
def studio(tmp_path: Path, shared_cache_dir: Path) -> Iterator[Any]:
    with client_for(tmp_path / "data", shared_cache_dir) as c:
        yield c


def make_project(c: Any, name: str = "demo", per_class: int = 16, classes: dict[str, str] | None = None) -> None:
    assert c.post("/api/projects", json={"name": name}).status_code == 201
    for i, (label, photo) in enumerate((classes or PHOTOS).items()):
        assert c.post(f"/api/projects/{name}/classes", json={"name": label}).status_code == 201
        r = c.post(f"/api/projects/{name}/classes/{label}/images", files=files(label, crops(photo, per_class, i)))
        assert r.status_code == 200 and r.json()["added"] == per_class, r.text


# ---------------------------------------------------------------- the trained project (one per module)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("studio") / "data"
    with client_for(data, shared_cache_dir) as c:
        make_project(c, "photos")
        r = c.post("/api/projects/photos/train", json={"how_many_training_steps": 300})
        assert r.status_code == 202, r.text
        job = r.json()
        second = c.post("/api/projects/photos/train", json={})  # while the first one runs
        events = wait_job(c, "photos", job["id"])
        yield {"client": c, "data": data, "job": job, "second": second, "events": events,
               "run": events[-1].get("run")}


def test_training_streams_bottlenecks_then_curves_then_the_result(trained: dict[str, Any]) -> None:
    events = trained["events"]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "done", events[-3:]
    assert kinds.index("bottlenecks") < kinds.index("step") < kinds.index("result") < kinds.index("done")
    last_bottlenecks = [e for e in events if e["type"] == "bottlenecks"][-1]
    assert last_bottlenecks["total"] == 48 and last_bottlenecks["done"] == last_bottlenecks["missing"]
    steps = [e for e in events if e["type"] == "step"]
    assert len(steps) >= 2 and all(s["total"] == 300 and 0 <= s["train_accuracy"] <= 1 for s in steps)
    assert [s["step"] for s in steps] == sorted({s["step"] for s in steps}) and steps[-1]["step"] <= 299
    result = [e for e in events if e["type"] == "result"][0]
    assert result["n"] > 0 and 0.5 < result["accuracy"] <= 1.0  # three very different photos


def test_a_second_training_while_one_runs_gets_409(trained: dict[str, Any]) -> None:
    second = trained["second"]
    assert second.status_code == 409
    assert "already running" in second.json()["error"] and second.json()["hint"]


def test_runs_list_and_details(trained: dict[str, Any]) -> None:
    c, run = trained["client"], trained["run"]
    runs = c.get("/api/projects/photos/runs").json()["runs"]
    assert [r["id"] for r in runs] == [run]
    details = c.get(f"/api/projects/photos/runs/{run}").json()
    assert details["n"] == sum(details["per_class"][k]["support"] for k in details["per_class"])
    assert set(details["per_class"]) == set(PHOTOS)
    cm = np.array(details["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == details["n"]
    assert (trained["data"] / "photos" / "runs" / run / "metrics.json").is_file()
    # A diagonal cell lists exactly its images, from the snapshot of the test predictions.
    labels = details["test"]["labels"]
    for i, label in enumerate(labels):
        cell = c.get(f"/api/projects/photos/runs/{run}/cells", params={"true": label, "predicted": label}).json()
        assert len(cell["items"]) == cm[i, i]
        assert all(item["exists"] and item["path"].startswith(f"{label}/") for item in cell["items"])


def test_retrain_from_the_command_line_reads_the_studio_project(trained: dict[str, Any]) -> None:
    """The project is a plain class-folder tree: runs/ is not taken for a class."""
    from headstart.data import index_image_dir

    index = index_image_dir(trained["data"] / "photos")
    assert index.labels == ("astronaut", "cat", "coffee") and len(index.records) == 48


def test_predict_an_image_and_bad_predict_input(trained: dict[str, Any]) -> None:
    c, run = trained["client"], trained["run"]
    r = c.post(f"/api/projects/photos/runs/{run}/predict?top_k=2", content=crops("chelsea", 1, seed=99)[0])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["top"][0]["label"] == "cat" and len(body["top"]) == 2 and "unknown" in body
    r = c.post(f"/api/projects/photos/runs/{run}/predict", files=files("x", crops("coffee", 1, seed=98)))
    assert r.json()["top"][0]["label"] == "coffee"
    bad = c.post(f"/api/projects/photos/runs/{run}/predict", content=b"not an image at all")
    assert bad.status_code == 422 and "upload" in bad.json()["error"]
    assert c.post(f"/api/projects/photos/runs/{run}/predict?top_k=0", content=b"x").status_code == 422
    assert c.post("/api/projects/photos/runs/nope/predict", content=b"x").status_code == 404
    assert c.post("/api/projects/photos/runs/..%2f..%2fetc/predict", content=b"x").status_code in (404, 422)


def test_retrain_after_adding_frames_runs_only_the_new_images(trained: dict[str, Any]) -> None:
    c = trained["client"]
    # A size no other test uses: the session's bottleneck cache is shared, and it is keyed by content.
    r = c.post("/api/projects/photos/classes/cat/images", files=files("cat", crops("chelsea", 4, seed=7, size=152)))
    assert r.json()["added"] == 4
    job = c.post("/api/projects/photos/train", json={"how_many_training_steps": 200}).json()
    events = wait_job(c, "photos", job["id"])
    assert events[-1]["type"] == "done", events[-3:]
    lookup = [e for e in events if e["type"] == "bottlenecks"][0]
    assert (lookup["total"], lookup["missing"], lookup["cached"]) == (52, 4, 48)
    assert events[-1]["computed"] == 4
    assert len(c.get("/api/projects/photos/runs").json()["runs"]) == 2


@pytest.mark.slow
def test_export_zip_runs_with_load_model(trained: dict[str, Any], tmp_path: Path) -> None:
    import headstart

    c, run = trained["client"], trained["run"]
    r = c.post(f"/api/projects/photos/runs/{run}/export", json={"format": "onnx"})
    assert r.status_code == 200, r.text
    zipped = c.get(r.json()["download"])
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path)
    assert any(n.endswith(".onnx") for n in names) and any(n.endswith(".json") for n in names)
    readme = next(tmp_path.rglob("README.md")).read_text()
    assert "headstart.load_model" in readme and "headstart serve" in readme
    model = headstart.load_model(next(tmp_path.rglob("*.onnx")))
    photo = tmp_path / "coffee.jpg"
    photo.write_bytes(crops("coffee", 1, seed=123)[0])
    predictions, skipped = model.predict_files([photo])
    assert not skipped and predictions[0].label == "coffee"
    assert c.post(f"/api/projects/photos/runs/{run}/export", json={"format": "tflite"}).status_code == 422

    r = c.post(f"/api/projects/photos/runs/{run}/export", json={"format": "openvino"})
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(c.get(r.json()["download"]).content)) as zf:
        assert {Path(n).suffix for n in zf.namelist()} >= {".xml", ".bin", ".json", ".md", ".txt"}
        zf.extractall(tmp_path / "ir")
    ir = headstart.load_model(next((tmp_path / "ir").rglob("*.xml")))
    assert ir.predict_files([photo])[0][0].label == "coffee"


def test_exporting_a_run_of_a_project_that_changed_says_what_to_do(trained: dict[str, Any]) -> None:
    c, run = trained["client"], trained["run"]
    c.post("/api/projects/photos/classes", json={"name": "rocket"})
    added = c.post("/api/projects/photos/classes/rocket/images", files=files("r", crops("rocket", 2))).json()
    try:
        r = c.post(f"/api/projects/photos/runs/{run}/export", json={"format": "onnx"})
        assert r.status_code == 422 and "'rocket'" in r.json()["error"] and "train again" in r.json()["hint"]
    finally:
        c.post("/api/projects/photos/images/delete", json={"paths": [row["path"] for row in added["results"]]})
        assert c.delete("/api/projects/photos/classes/rocket").status_code == 200


@pytest.mark.slow
def test_start_and_stop_headstart_serve(trained: dict[str, Any]) -> None:
    import httpx

    c, run = trained["client"], trained["run"]
    if not c.get("/api/serve").json()["available"]:
        pytest.skip("headstart serve is not in this installation")
    status = c.post(f"/api/projects/photos/runs/{run}/serve", json={}).json()
    try:
        assert status["url"].startswith("http://127.0.0.1:")
        deadline = time.monotonic() + 180
        while status["state"] != "ready":
            assert status["state"] == "starting" and time.monotonic() < deadline, status
            time.sleep(0.5)
            status = c.get("/api/serve").json()
        r = httpx.post(f"{status['url']}/v1/predict", files={"file": ("c.jpg", crops("coffee", 1, 31)[0])}, timeout=60)
        assert r.status_code == 200 and "coffee" in r.text
    finally:
        assert c.delete("/api/serve").json()["state"] == "stopped"
    assert c.get("/api/serve").json()["state"] == "stopped"
    assert c.post(f"/api/projects/photos/runs/{run}/serve", json={"port": 80}).status_code == 422


@pytest.mark.slow
def test_the_doctor_finds_a_planted_label_error(studio: Any) -> None:
    make_project(studio, "p", per_class=16)
    planted = studio.post("/api/projects/p/classes/cat/images", files=files("x", crops("coffee", 1, seed=555)))
    path = planted.json()["results"][0]["path"]
    before = studio.get("/api/projects/p/doctor").json()
    if not before["available"]:
        pytest.skip("the data doctor is not in this installation")
    assert before["report"] is None
    job = studio.post("/api/projects/p/doctor", json={}).json()
    assert studio.post("/api/projects/p/doctor", json={}).status_code == 409
    events = wait_job(studio, "p", job["id"])
    assert events[-1]["type"] == "done", events[-3:]
    report = studio.get("/api/projects/p/doctor").json()["report"]
    issues = report["findings"]["label_issues"]
    assert any(i["path"] == path and i["suggested"] == "coffee" and i["exists"] for i in issues), issues
    studio.post("/api/projects/p/images/move", json={"paths": [path], "to": "coffee"})
    issues = studio.get("/api/projects/p/doctor").json()["report"]["findings"]["label_issues"]
    assert not next(i for i in issues if i["path"] == path)["exists"]


# ---------------------------------------------------------------- collecting


def test_uploads_are_stored_once_under_their_content_hash(studio: Any, tmp_path: Path) -> None:
    make_project(studio, "p", per_class=3, classes={"cat": "chelsea", "coffee": "coffee"})
    folder = tmp_path / "data" / "p" / "cat"
    stored = sorted(folder.iterdir())
    assert len(stored) == 3
    for f in stored:
        assert f.name == hashlib.sha256(f.read_bytes()).hexdigest()[:16] + ".jpg"
    again = studio.post("/api/projects/p/classes/cat/images", files=files("cat", crops("chelsea", 3, 0))).json()
    assert again["added"] == 0 and again["duplicate"] == 3 and "already in this class" in again["results"][0]["message"]
    elsewhere = studio.post("/api/projects/p/classes/coffee/images", files=files("c", crops("chelsea", 1, 0))).json()
    assert elsewhere["duplicate"] == 1 and "already in class 'cat'" in elsewhere["results"][0]["message"]
    assert len(list(folder.iterdir())) == 3 and len(list((folder.parent / "coffee").iterdir())) == 3
    png = io.BytesIO()
    Image.open(io.BytesIO(crops("chelsea", 1, 5)[0])).save(png, "PNG")
    r = studio.post("/api/projects/p/classes/cat/images", files=[("files", ("shot.PNG", png.getvalue(), "image/png"))])
    assert r.json()["results"][0]["path"].endswith(".png")


def test_non_image_files_get_a_per_file_message_and_nothing_is_lost(studio: Any, tmp_path: Path) -> None:
    make_project(studio, "p", per_class=2, classes={"cat": "chelsea", "coffee": "coffee"})
    mixed = [("files", ("notes.txt", b"shopping list", "text/plain")),
             ("files", ("broken.jpg", crops("chelsea", 1, 9)[0][:300], "image/jpeg")),
             ("files", ("good.jpg", crops("chelsea", 1, 10)[0], "image/jpeg"))]
    r = studio.post("/api/projects/p/classes/cat/images", files=mixed)
    assert r.status_code == 200
    body = r.json()
    assert body["added"] == 1 and body["count"] == 3
    messages = [row.get("message", "") for row in body["results"]]
    assert messages[0].startswith("notes.txt: not an image") and messages[1].startswith("broken.jpg: corrupt")
    only_bad = studio.post("/api/projects/p/classes/cat/images", files=mixed[:1])
    assert only_bad.status_code == 422 and only_bad.json()["error"].startswith("notes.txt: not an image")
    assert studio.post("/api/projects/p/classes/cat/images", content=b"").status_code == 422
    assert len(list((tmp_path / "data" / "p" / "cat").iterdir())) == 3


def test_a_200_mb_upload_gets_413_and_keeps_what_was_collected(studio: Any, tmp_path: Path) -> None:
    make_project(studio, "p", per_class=2, classes={"cat": "chelsea", "coffee": "coffee"})
    big = b"\xff\xd8" + bytes(200 * 1000 * 1000)
    r = studio.post("/api/projects/p/classes/cat/images", files=[("files", ("huge.jpg", big, "image/jpeg"))])
    assert r.status_code == 413 and "the limit is 50.0 MB per file" in r.json()["error"]
    del big
    assert studio.get("/api/projects/p").json()["classes"][0]["count"] == 2
    assert len(list((tmp_path / "data" / "p" / "cat").iterdir())) == 2  # no partial file left behind


def test_a_streamed_upload_is_cut_off_at_the_limit(tmp_path: Path, shared_cache_dir: Path) -> None:
    """No Content-Length (chunked): the body is counted as it arrives and refused past the limit."""
    with client_for(tmp_path / "data", shared_cache_dir, max_upload_mb=1) as c:
        make_project(c, "p", per_class=1, classes={"cat": "chelsea", "coffee": "coffee"})

        def chunks() -> Iterator[bytes]:
            for _ in range(40):
                yield bytes(64 * 1024)

        r = c.post("/api/projects/p/classes/cat/images?filename=big.jpg", content=chunks())
        assert r.status_code == 413 and "limit is 1.0 MB" in r.json()["error"]
        assert c.get("/api/projects/p/classes/cat/images").json()["total"] == 1


def test_the_real_server_refuses_a_200_mb_upload_before_reading_it(tmp_path: Path, shared_cache_dir: Path) -> None:
    from headstart.studio.server import StudioThread

    with StudioThread(tmp_path / "data", cache_dir=shared_cache_dir) as running:
        port = int(running.url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/api/projects", body=json.dumps({"name": "p", "classes": ["cat"]}),
                     headers={"Content-Type": "application/json"})
        assert conn.getresponse().read() and True
        conn.putrequest("POST", "/api/projects/p/classes/cat/images?filename=huge.jpg")
        conn.putheader("Content-Type", "image/jpeg")
        conn.putheader("Content-Length", str(200 * 1000 * 1000))
        conn.endheaders()
        conn.send(bytes(1024 * 1024))  # 1 MB of the 200: the answer must not wait for the rest
        response = conn.getresponse()
        assert response.status == 413
        assert "200.0 MB" in json.loads(response.read())["error"]
        conn.close()


BAD_NAMES = ["../evil", "a/b", "a\\b", "..", ".hidden", "nul\0byte", "", "   ", "x" * 101]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_project_and_class_names_are_refused(studio: Any, tmp_path: Path, name: str) -> None:
    r = studio.post("/api/projects", json={"name": name})
    assert r.status_code == 422 and r.json()["error"] and r.json()["hint"]
    studio.post("/api/projects", json={"name": "p"})
    r = studio.post("/api/projects/p/classes", json={"name": name})
    assert r.status_code == 422 and "name" in r.json()["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing escaped the data folder
    assert [p.name for p in (tmp_path / "data" / "p").iterdir()] == []


def test_class_rules_rename_move_delete(studio: Any, tmp_path: Path) -> None:
    make_project(studio, "p", per_class=3, classes={"cat": "chelsea", "coffee": "coffee"})
    assert studio.post("/api/projects/p/classes", json={"name": "runs"}).status_code == 422
    assert studio.post("/api/projects/p/classes", json={"name": "Cat"}).status_code == 409
    assert studio.post("/api/projects/p/classes", json={"name": "cat"}).status_code == 409
    assert studio.post("/api/projects", json={"name": "p"}).status_code == 409
    assert studio.patch("/api/projects/p/classes/cat", json={"name": "coffee"}).status_code == 409
    assert studio.patch("/api/projects/p/classes/cat", json={"name": "../x"}).status_code == 422
    assert studio.patch("/api/projects/p/classes/cat", json={"name": "kitten"}).json()["count"] == 3
    page = studio.get("/api/projects/p/classes/kitten/images?offset=1&limit=1").json()
    assert page["total"] == 3 and len(page["items"]) == 1
    path = page["items"][0]["path"]
    moved = studio.post("/api/projects/p/images/move", json={"paths": [path], "to": "coffee"}).json()["moved"]
    assert moved == [{"from": path, "to": "coffee/" + path.split("/")[1]}]
    assert studio.get("/api/projects/p/classes/coffee/images").json()["total"] == 4
    for bad in (["../../etc/passwd"], ["kitten/../../x.jpg"], ["kitten/.hidden.jpg"], "kitten/a.jpg", []):
        r = studio.post("/api/projects/p/images/delete", json={"paths": bad})
        assert r.status_code == 422, bad
    assert studio.post("/api/projects/p/images/delete", json={"paths": ["kitten/missing.jpg"]}).status_code == 404
    assert studio.post("/api/projects/p/images/delete", json={"paths": [moved[0]["to"]]}).json()["deleted"] == 1
    assert studio.delete("/api/projects/p/classes/kitten").status_code == 409  # still holds images
    studio.post("/api/projects/p/classes", json={"name": "empty"})
    assert studio.delete("/api/projects/p/classes/empty").status_code == 200
    assert studio.get("/api/projects/nope").status_code == 404


def test_thumbnails_are_small_jpegs_cached_on_disk(studio: Any, tmp_path: Path) -> None:
    make_project(studio, "p", per_class=2, classes={"cat": "chelsea", "coffee": "coffee"})
    big = io.BytesIO()
    import skimage.data

    Image.fromarray(skimage.data.astronaut()).resize((2000, 2000)).save(big, "JPEG", quality=95)
    studio.post("/api/projects/p/classes/cat/images", files=[("files", ("big.jpg", big.getvalue(), "image/jpeg"))])
    items = studio.get("/api/projects/p/classes/cat/images").json()["items"]
    for item in items:
        r = studio.get(f"/api/projects/p/thumbs/{item['path']}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(r.content)) as img:
            assert max(img.size) <= 160
        assert len(r.content) < 20_000
    assert len(list((tmp_path / "data" / "p" / ".studio" / "thumbs").rglob("*.jpg"))) == 3
    assert studio.get("/api/projects/p/thumbs/cat/..%2f..%2fsecret.jpg").status_code in (404, 422)
    assert studio.get("/api/projects/p/files/" + items[0]["path"]).status_code == 200


def test_training_a_one_class_project_gets_a_readable_message(studio: Any) -> None:
    make_project(studio, "solo", per_class=3, classes={"cat": "chelsea"})
    r = studio.post("/api/projects/solo/train", json={})
    assert r.status_code == 422 and "at least two classes" in r.json()["error"] and r.json()["hint"]
    studio.post("/api/projects/solo/classes", json={"name": "dog"})
    r = studio.post("/api/projects/solo/train", json={})
    assert r.status_code == 422 and "at least two classes" in r.json()["error"]
    studio.post("/api/projects/solo/classes/dog/images", files=files("d", crops("coffee", 2)))
    studio.post("/api/projects/solo/classes", json={"name": "bird"})
    r = studio.post("/api/projects/solo/train", json={})
    assert r.status_code == 422 and "'bird' has no images" in r.json()["error"]


@pytest.mark.parametrize("settings, message", [
    ({"learning_rate": -1}, "learning_rate must be a positive number"),
    ({"how_many_training_steps": 2.5}, "how_many_training_steps must be a whole number"),
    ({"how_many_training_steps": "many"}, "how_many_training_steps must be a whole number"),
    ({"backbone": "no_such_net"}, "no_such_net"),
    ({"image_dir": "/etc"}, "unknown setting 'image_dir'"),
    ({"testing_percentage": 60, "validation_percentage": 50}, "over 100"),
])
def test_bad_settings_are_refused_before_training(studio: Any, settings: dict[str, Any], message: str) -> None:
    make_project(studio, "p", per_class=2, classes={"cat": "chelsea", "coffee": "coffee"})
    r = studio.post("/api/projects/p/train", json=settings)
    if r.status_code == 202:  # an unknown backbone is only found out by the job: it ends with the message
        events = wait_job(studio, "p", r.json()["id"], timeout=120)
        assert events[-1]["type"] == "error" and message in events[-1]["message"]
    else:
        assert r.status_code == 422 and message in r.json()["error"], r.json()


def test_info_lists_the_settings_form(studio: Any) -> None:
    info = studio.get("/api/info").json()
    names = [f["name"] for f in info["settings"]]
    assert names[:4] == ["backbone", "how_many_training_steps", "learning_rate", "train_batch_size"]
    main = {f["name"] for f in info["settings"] if f["main"]}
    assert "optimizer" not in main and "optimizer" in names
    backbone = info["settings"][0]
    assert any(c["value"] == "efficientnet_lite0" and c["offline"] for c in backbone["choices"])
    assert info["max_upload_mb"] == 50


def test_requests_from_other_sites_are_refused(studio: Any) -> None:
    r = studio.get("/api/projects", headers={"host": "evil.example"})
    assert r.status_code == 421
    r = studio.post("/api/projects", json={"name": "p"}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and studio.get("/api/projects").json()["projects"] == []
    assert studio.post("/api/projects", json={"name": "p"}, headers={"origin": BASE}).status_code == 201
    page = studio.get("/")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]


def test_the_page_loads_nothing_from_the_network() -> None:
    static = Path(__file__).parent.parent / "headstart" / "studio" / "static"
    import re

    allowed = {"http://www.w3.org/2000/svg", "http://127.0.0.1"}  # a namespace name, and a hint to the user
    for f in static.iterdir():
        text = f.read_text()
        urls = set(re.findall(r"https?://[\w.:/-]*", text)) - allowed
        assert not urls, (f.name, urls)
        assert "@import" not in text and "//" + "cdn" not in text


def test_an_existing_class_folder_tree_opens(tmp_path: Path, shared_cache_dir: Path, fashion_dir: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(fashion_dir, data / "fashion")
    with client_for(data, shared_cache_dir) as c:
        project = c.get("/api/projects/fashion").json()
        assert len(project["classes"]) == 10 and all(cl["count"] == 30 for cl in project["classes"])
        page = c.get("/api/projects/fashion/classes/Bag/images?limit=5").json()
        assert page["total"] == 30 and len(page["items"]) == 5
        assert c.get(f"/api/projects/fashion/thumbs/{page['items'][0]['path']}").status_code == 200


def test_studio_command_prints_its_url_and_serves(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "headstart", "studio", "--data_dir", str(tmp_path / "d"),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("headstart studio at http://127.0.0.1:"), line
        url = line.split()[3]
        import httpx

        assert httpx.get(f"{url}/api/projects", timeout=30).json() == {"projects": []}
        assert "headstart studio" in httpx.get(url, timeout=30).text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_studio_command_bad_flags(cli: Any, tmp_path: Path) -> None:
    code, _, err = cli("studio", "--port", "70000")
    assert code == 2 and "--port must be between 0 and 65535" in err
    (tmp_path / "file").write_text("x")
    code, _, err = cli("studio", "--data_dir", tmp_path / "file")
    assert code == 2 and "is a file, not a folder" in err
