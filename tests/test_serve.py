"""headstart serve: the real server (uvicorn on a free loopback port) with real trained models.

Every route, every bad input, the key, concurrency, overflow, timeouts,
SIGTERM, a standard Open Inference Protocol client (Triton's), and
property-based requests from the app's own OpenAPI document.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import re
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

KEY = "test-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY_MB = 2.0


# ---------------------------------------------------------------- the running server


@dataclass
class Running:
    url: str
    app: Any
    server: Any

    @property
    def state(self) -> Any:
        return self.app.state.serve

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("headers", AUTH)
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)


@contextmanager
def serving(models: dict[str, Any], **settings: Any) -> Iterator[Running]:
    """uvicorn in a thread of this process, on a free 127.0.0.1 port; stopped (and joined) afterwards."""
    from headstart.serve.app import create_app
    from headstart.serve.server import bind_socket, build_server
    from headstart.serve.settings import ServeSettings

    app = create_app(models, ServeSettings(**settings))
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = build_server(app, host="127.0.0.1", port=port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # bounded: the models warm up, then readiness turns 200
            try:
                if httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        yield Running(url, app, server)
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def models(trained_run, exported_onnx) -> Iterator[dict[str, Any]]:
    from headstart.model import load_model

    loaded = {"fashion": load_model(trained_run.run_dir), "fashion-onnx": load_model(exported_onnx.path)}
    yield loaded
    for clf in loaded.values():
        clf.close()


@pytest.fixture(scope="module")
def server(models) -> Iterator[Running]:
    with serving(models, api_key=KEY, max_body_mb=MAX_BODY_MB, max_queue=64) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


# ---------------------------------------------------------------- images


@pytest.fixture(scope="module")
def holdout(fashion_holdout_dir: Path) -> list[tuple[str, Path]]:
    """(true label, file) for two test-set images per class: never seen in training."""
    return [(d.name, p) for d in sorted(fashion_holdout_dir.iterdir()) for p in sorted(d.iterdir())[:2]]


@pytest.fixture(scope="module")
def photo_jpeg(photos) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(photos["chelsea"]).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bomb(side: int = 12_000) -> bytes:
    """A valid greyscale PNG of side x side pixels (more than the pixel limit) in a few hundred kB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + black pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def expected_proba(clf: Any, data: bytes) -> np.ndarray:
    return clf.predict_proba([data])[0]


def check_rows_match(rows: list[dict], clf: Any, images: list[bytes], top_k: int = 5) -> None:
    """Each row names the top label the model gives the image alone, with its probabilities."""
    for row, data in zip(rows, images, strict=True):
        proba = expected_proba(clf, data)
        order = np.argsort(-proba, kind="stable")[:top_k]
        assert [t["label"] for t in row["top"]][:1] == [clf.labels[order[0]]]
        assert len(row["top"]) == min(top_k, len(clf.labels))
        for t in row["top"]:
            assert t["score"] == pytest.approx(float(proba[clf.labels.index(t["label"])]), abs=2e-3)


def assert_error(response: httpx.Response, status: int, *needles: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    message = body["error"]
    assert "\n" not in message and "Traceback" not in message and message
    for needle in needles:
        assert needle.lower() in message.lower(), message
    return message


# ---------------------------------------------------------------- REST


def test_predict_takes_raw_multipart_and_json_and_answers_the_same(client, models, holdout):
    clf = models["fashion"]
    (_, a), (_, b) = holdout[0], holdout[-1]
    raw = client.post("/v1/models/fashion/predict", content=a.read_bytes(), headers={**AUTH, "content-type": "image/png"})
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["model"] == "fashion" and body["model_version"] == clf.version and len(clf.version) == 16
    assert [r["path"] for r in body["predictions"]] == ["0"]
    check_rows_match(body["predictions"], clf, [a.read_bytes()])

    files = [("file", (a.name, a.read_bytes(), "image/png")), ("file", (b.name, b.read_bytes(), "image/png"))]
    multi = client.post("/v1/models/fashion/predict", files=files).json()
    assert [r["path"] for r in multi["predictions"]] == [a.name, b.name]
    check_rows_match(multi["predictions"], clf, [a.read_bytes(), b.read_bytes()])

    instances = {"instances": [{"b64": base64.b64encode(a.read_bytes()).decode()},
                               {"b64": base64.b64encode(b.read_bytes()).decode(), "name": "second"}]}
    as_json = client.post("/v1/models/fashion/predict", json=instances).json()
    assert [r["path"] for r in as_json["predictions"]] == ["0", "second"]
    assert [r["top"] for r in as_json["predictions"]] == [r["top"] for r in multi["predictions"]]
    single, first = raw.json()["predictions"][0]["top"], multi["predictions"][0]["top"]
    assert [t["label"] for t in single][:1] == [t["label"] for t in first][:1]
    assert [t["score"] for t in single] == pytest.approx([t["score"] for t in first], abs=2e-3)


def test_top_k_and_the_default_model(client, models, holdout, photo_jpeg):
    _, a = holdout[3]
    three = client.post("/v1/predict?top_k=3", files={"file": (a.name, a.read_bytes())}).json()
    assert three["model"] == "fashion" and len(three["predictions"][0]["top"]) == 3
    every = client.post("/v1/models/fashion-onnx/predict?top_k=1000", content=photo_jpeg,
                        headers={**AUTH, "content-type": "image/jpeg"}).json()
    assert every["model"] == "fashion-onnx" and len(every["predictions"][0]["top"]) == len(models["fashion"].labels)
    assert sum(t["score"] for t in every["predictions"][0]["top"]) == pytest.approx(1.0, abs=1e-3)
    check_rows_match(every["predictions"], models["fashion-onnx"], [photo_jpeg], top_k=10)
    for bad in ("0", "-1", "abc", "1001"):
        assert_error(client.post(f"/v1/predict?top_k={bad}", content=a.read_bytes(),
                                 headers={**AUTH, "content-type": "image/png"}), 400, "top_k")


def test_model_listing(client, models):
    listing = client.get("/v1/models").json()
    assert listing["default"] == "fashion"
    assert [m["model"] for m in listing["models"]] == ["fashion", "fashion-onnx"]
    one = client.get("/v1/models/fashion-onnx").json()
    clf = models["fashion-onnx"]
    assert one["labels"] == list(clf.labels) and one["model_version"] == clf.version and one["ready"] is True
    assert one["runtime"] == clf.runtime and one["max_batch_size"] == clf.batch_size
    assert_error(client.get("/v1/models/nope"), 404, "nope", "fashion")


# ---------------------------------------------------------------- Open Inference Protocol


def test_v2_health_metadata_and_readiness(client, server, models):
    assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}  # no key needed
    assert httpx.get(server.url + "/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "headstart" and "binary_tensor_data" in meta["extensions"]
    clf = models["fashion"]
    model = client.get("/v2/models/fashion").json()
    assert model == {"name": "fashion", "versions": [clf.version], "platform": clf.platform,
                     "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
                     "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                                 {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]}
    assert client.get(f"/v2/models/fashion/versions/{clf.version}").json() == model
    assert client.get("/v2/models/fashion/ready").json() == {"name": "fashion", "ready": True}
    assert client.get(f"/v2/models/fashion/versions/{clf.version}/ready").status_code == 200
    assert_error(client.get("/v2/models/fashion/versions/0000/ready"), 404, "version")
    assert_error(client.get("/v2/models/nope"), 404, "nope")
    assert_error(client.get("/v2/models/nope/ready"), 404)


def test_v2_infer_with_base64_json(client, models, holdout, photo_jpeg):
    clf = models["fashion-onnx"]
    images = [holdout[5][1].read_bytes(), photo_jpeg]
    declared = {"id": "req-1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                           "parameters": {"content_type": "base64"},
                                           "data": [base64.b64encode(d).decode() for d in images]}]}
    response = client.post("/v2/models/fashion-onnx/infer", json=declared)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "fashion-onnx" and body["model_version"] == clf.version and body["id"] == "req-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES" and outputs["label"]["shape"] == [2]
    assert outputs["probabilities"]["datatype"] == "FP32" and outputs["probabilities"]["shape"] == [2, 10]
    proba = np.array(outputs["probabilities"]["data"], np.float32).reshape(2, 10)
    want = np.stack([expected_proba(clf, d) for d in images])
    np.testing.assert_allclose(proba, want, atol=2e-3)
    assert outputs["label"]["data"] == [clf.labels[i] for i in want.argmax(1)]
    # Plain base64 strings without the parameter, nested data, and one output asked for.
    plain = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                         "data": [[base64.b64encode(images[0]).decode()]]}], "outputs": [{"name": "label"}]}
    body = client.post("/v2/models/fashion-onnx/infer", json=plain).json()
    assert [o["name"] for o in body["outputs"]] == ["label"] and "id" not in body
    assert body["outputs"][0]["data"] == [clf.labels[int(want[0].argmax())]]


def _binary_request(images: list[bytes], outputs: list[dict] | None = None) -> tuple[bytes, dict[str, str]]:
    blob = b"".join(struct.pack("<I", len(d)) + d for d in images)
    request: dict[str, Any] = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                                           "parameters": {"binary_data_size": len(blob)}}]}
    if outputs is not None:
        request["outputs"] = outputs
    header = json.dumps(request).encode()
    return header + blob, {"Inference-Header-Content-Length": str(len(header)),
                           "Content-Type": "application/octet-stream"}


def test_v2_binary_tensor_extension_both_ways(client, models, holdout):
    clf = models["fashion"]
    images = [p.read_bytes() for _, p in holdout[:3]]
    body, headers = _binary_request(images, [{"name": "probabilities", "parameters": {"binary_data": True}},
                                             {"name": "label", "parameters": {"classification": 2}}])
    response = client.post("/v2/models/fashion/infer", content=body, headers={**AUTH, **headers})
    assert response.status_code == 200, response.text
    split = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:split])
    probs, top2 = header["outputs"]
    assert probs["parameters"]["binary_data_size"] == 3 * 10 * 4 and "data" not in probs
    proba = np.frombuffer(response.content[split:split + 120], "<f4").reshape(3, 10)
    want = np.stack([expected_proba(clf, d) for d in images])
    np.testing.assert_allclose(proba, want, atol=2e-3)
    assert top2["datatype"] == "BYTES" and top2["shape"] == [3, 2]
    first = top2["data"][0].split(":")
    assert first[2] == clf.labels[int(want[0].argmax())] and int(first[1]) == int(want[0].argmax())
    assert float(first[0]) == pytest.approx(float(want[0].max()), abs=2e-3)


def test_a_standard_v2_client_works_unmodified(server, models, holdout, photo_jpeg):
    """Triton's own HTTP client, with its defaults (binary tensors both ways) and with JSON."""
    import tritonclient.http as triton

    def auth() -> dict[str, str]:  # a fresh dict each call: the client adds its own headers to the one it gets
        return dict(AUTH)

    clf = models["fashion-onnx"]
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"), connection_timeout=30,
                                          network_timeout=60)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("fashion-onnx", headers=auth())
        meta = client.get_model_metadata("fashion-onnx", headers=auth())
        assert meta["inputs"][0]["name"] == "image" and meta["versions"] == [clf.version]
        images = [holdout[7][1].read_bytes(), photo_jpeg]
        want = np.stack([expected_proba(clf, d) for d in images])
        data = np.array(images, dtype=np.object_)
        for binary in (True, False):
            tensor = triton.InferInput("image", [len(images)], "BYTES")
            if binary:
                tensor.set_data_from_numpy(data)
            else:  # JSON needs text: the files base64-encoded
                tensor.set_data_from_numpy(np.array([base64.b64encode(d) for d in images], dtype=np.object_),
                                           binary_data=False)
            result = client.infer("fashion-onnx", [tensor], headers=auth())
            np.testing.assert_allclose(result.as_numpy("probabilities"), want, atol=2e-3)
            labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
            assert labels == [clf.labels[i] for i in want.argmax(1)]
            assert result.get_response()["model_version"] == clf.version
        tensor = triton.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(data[:1])
        ranked = client.infer("fashion-onnx", [tensor], headers=auth(),
                              outputs=[triton.InferRequestedOutput("probabilities", class_count=3)])
        top = [x.decode().split(":") for x in ranked.as_numpy("probabilities").reshape(-1)]
        assert [t[2] for t in top][0] == clf.labels[int(want[0].argmax())] and len(top) == 3
        with pytest.raises(triton.InferenceServerException, match="unknown model"):
            client.infer("nope", [tensor], headers=auth())
    finally:
        client.close()


# ---------------------------------------------------------------- bad input, limits, the key


@pytest.mark.parametrize("route", ["/v1/predict", "/v2/models/fashion/infer"])
def test_unreadable_images_are_422_naming_the_part(client, route, encode):
    truncated = encode(np.full((64, 64, 3), 120, np.uint8), "PNG")[:60]
    cases = {"notes.txt": b"this is a text file, not a photo\n", "half.png": truncated,
             "bomb.png": png_bomb(), "empty.png": b""}
    for name, data in cases.items():
        if route.startswith("/v1"):
            response = client.post(route, files=[("file", ("ok.png", encode(np.zeros((8, 8, 3), np.uint8), "PNG"))),
                                                 ("file", (name, data))])
            where = name
        else:
            response = client.post(route, json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                            "data": [base64.b64encode(data).decode()],
                                                            "parameters": {"content_type": "base64"}}]})
            where = "part '0'"
        message = assert_error(response, 422, where)
        if name == "bomb.png":
            assert "pixel" in message.lower(), message


def test_bad_requests_are_400(client, holdout):
    png = holdout[0][1].read_bytes()
    post = client.post
    assert_error(post("/v1/predict", content=b"hello", headers={**AUTH, "content-type": "text/plain"}), 400,
                 "content-type")
    assert_error(post("/v1/predict", content=png, headers={**AUTH, "content-type": ""}), 400, "content-type")
    assert_error(post("/v1/predict", content=b'{"instances": [', headers={**AUTH, "content-type": "application/json"}),
                 400, "malformed json")
    assert_error(post("/v1/predict", json={"images": []}), 400, "instances")
    assert_error(post("/v1/predict", json={"instances": []}), 400, "no image")
    assert_error(post("/v1/predict", json={"instances": [{"b64": "%%%not base64%%%"}]}), 400, "base64")
    assert_error(post("/v1/predict", json={"instances": ["abc"]}), 400, "instances[0]")
    assert_error(post("/v1/predict", files={"photo": ("a.png", png)}), 400, "file")
    assert_error(post("/v1/predict", content=b"--x\r\nbroken", headers={**AUTH, "content-type":
                                                                       "multipart/form-data; boundary=x"}), 400)
    infer = "/v2/models/fashion/infer"
    one = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png).decode()]}
    assert_error(post(infer, content=b"{", headers={**AUTH, "content-type": "application/json"}), 400, "malformed")
    assert_error(post(infer, json={"inputs": [{**one, "name": "input0"}]}), 400, "input0")
    assert_error(post(infer, json={"inputs": [{**one, "datatype": "FP32"}]}), 400, "BYTES")
    assert_error(post(infer, json={"inputs": [{**one, "shape": [2]}]}), 400, "shape")
    assert_error(post(infer, json={"inputs": [{**one, "shape": [1, 1]}]}), 400, "shape")
    assert_error(post(infer, json={"inputs": [one], "outputs": [{"name": "logits"}]}), 400, "logits")
    assert_error(post(infer, json={"inputs": [one, one]}), 400, "one input")
    assert_error(post(infer, json=[1, 2]), 400)
    assert_error(post(infer, json=one, headers={**AUTH, "content-type": "text/csv"}), 400, "content-type")
    body, headers = _binary_request([png])
    assert_error(post(infer, content=body[:-5], headers={**AUTH, **headers}), 400, "binary")
    assert_error(post(infer, content=body, headers={**AUTH, **headers, "Inference-Header-Content-Length": "x"}), 400)
    assert_error(client.put("/v1/predict", content=png), 405, "PUT")
    assert_error(client.get("/v1/nothing"), 404, "/docs")


def test_bodies_over_the_limit_are_413(client, server, models):
    big = b"\xff\xd8" + b"\0" * int((MAX_BODY_MB + 1) * 1048576)
    assert_error(client.post("/v1/predict", content=big, headers={**AUTH, "content-type": "image/jpeg"}), 413, "MB")

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused once the stream passes the limit
        for _ in range(12):
            yield b"\0" * 262144

    assert_error(client.post("/v1/predict", content=chunks(), headers={**AUTH, "content-type": "image/png"}), 413)
    bomb = gzip.compress(b"\0" * int((MAX_BODY_MB + 4) * 1048576))
    assert len(bomb) < 100_000
    assert_error(client.post("/v2/models/fashion/infer", content=bomb,
                             headers={**AUTH, "content-type": "application/json", "content-encoding": "gzip"}), 413)
    # A compressed body within the limit is fine.
    ok = gzip.compress(json.dumps({"instances": []}).encode())
    assert_error(client.post("/v1/predict", content=ok, headers={**AUTH, "content-type": "application/json",
                                                                 "content-encoding": "gzip"}), 400, "no image")
    too_many = {"instances": [{"b64": "AA=="}] * 65}
    assert_error(client.post("/v1/predict", json=too_many), 413, "max_queue")
    assert_error(client.post("/v1/predict", files=[("file", (f"{i}.png", b"x")) for i in range(65)]), 413, "max_queue")
    assert server.state.workers["fashion"].pending == 0
    assert client.get("/v2/health/ready").status_code == 200


def test_unknown_models_are_404(client):
    assert_error(client.post("/v1/models/nope/predict", content=b"x", headers={**AUTH, "content-type": "image/png"}),
                 404, "nope")
    assert_error(client.post("/v2/models/nope/infer", json={}), 404, "nope")
    assert_error(client.post("/v2/models/fashion/versions/123/infer", json={}), 404, "version")


def test_the_key_guards_every_route_but_health(server, holdout):
    png = holdout[0][1].read_bytes()
    plain = httpx.Client(base_url=server.url, timeout=30)
    guarded = [("GET", "/v1/models"), ("POST", "/v1/predict"), ("GET", "/v2"), ("GET", "/v2/models/fashion"),
               ("GET", "/v2/models/fashion/ready"), ("POST", "/v2/models/fashion/infer"), ("GET", "/metrics"),
               ("GET", "/"), ("GET", "/docs"), ("GET", "/openapi.json")]
    with plain:
        for method, path in guarded:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                response = plain.request(method, path, headers=headers, content=png if method == "POST" else None)
                assert_error(response, 401, "key")
                assert response.headers["www-authenticate"].startswith("Basic" if path in ("/", "/docs") else "Bearer")
        assert plain.get("/v2/health/live").status_code == 200
        assert plain.get("/v2/health/ready").status_code == 200
        basic = "Basic " + base64.b64encode(f"anyone:{KEY}".encode()).decode()
        assert plain.get("/", headers={"Authorization": basic}).status_code == 200
        ok = plain.post("/v1/predict", content=png, headers={"Authorization": f"bearer {KEY}",
                                                             "content-type": "image/png"})
        assert ok.status_code == 200


# ---------------------------------------------------------------- service routes


def test_metrics_page_docs_and_openapi(client, server):
    client.post("/v1/predict", json={"instances": []})
    text = client.get("/metrics").text
    for name in ("headstart_requests_total", "headstart_request_duration_seconds_bucket", "headstart_batch_size_bucket",
                 "headstart_queue_depth", "headstart_images_total", "headstart_images_per_second"):
        assert name in text
    assert 'headstart_requests_total{method="POST",route="/v1/predict",status="400"}' in text
    assert 'headstart_queue_depth{model="fashion"} 0.0' in text
    page = client.get("/")
    assert page.status_code == 200 and "<script>" in page.text and "default-src 'none'" in page.headers[
        "content-security-policy"]
    # Nothing from the network: no script, style, font or image address outside this server.
    assert not re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import""", page.text)
    docs = client.get("/docs").text
    assert "/docs/assets/swagger-ui-bundle.js" in docs and "cdn." not in docs
    asset = client.get("/docs/assets/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000
    doc = client.get("/openapi.json").json()
    for path in ("/v1/models/{name}/predict", "/v1/predict", "/v2/health/live", "/v2/health/ready",
                 "/v2/models/{name}", "/v2/models/{name}/ready", "/v2/models/{name}/infer", "/metrics", "/"):
        assert path in doc["paths"], path
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/v2/health/live"]["get"]["security"] == []


def test_access_log_is_one_json_line_per_request(client, caplog, holdout):
    import logging

    ours = {"/v1/models/fashion/predict", "/v1/models/nope"}

    def access() -> list[dict]:  # a line from an earlier test's request may still arrive: keep this test's
        rows = [json.loads(r.getMessage()) for r in caplog.records if r.name == "headstart.access"]
        return [r for r in rows if r["path"] in ours]

    with caplog.at_level(logging.INFO, logger="headstart.access"):
        client.post("/v1/models/fashion/predict", files={"file": ("a.png", holdout[0][1].read_bytes())})
        client.get("/v1/models/nope")
        deadline = time.monotonic() + 10  # the line is written once the response is sent, so it may trail it
        while len(access()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    records = access()
    assert [(r["route"], r["status"]) for r in records] == [("/v1/models/{name}/predict", 200),
                                                           ("/v1/models/{name}", 404)]
    assert records[0]["model"] == "fashion" and records[0]["images"] == 1 and records[0]["ms"] > 0


# ---------------------------------------------------------------- load


async def _burst(url: str, jobs: list[tuple[str, dict[str, Any]]], concurrency: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120, limits=limits) as c:
        gate = asyncio.Semaphore(concurrency)

        async def one(path: str, kwargs: dict[str, Any]) -> httpx.Response:
            async with gate:
                return await c.post(path, **kwargs)

        return await asyncio.gather(*(one(p, k) for p, k in jobs))


def test_32_concurrent_clients_all_answered_correctly(server, models, holdout, photo_jpeg):
    clf = models["fashion"]
    pool = [p.read_bytes() for _, p in holdout] + [photo_jpeg]
    expected = {i: clf.labels[int(expected_proba(clf, d).argmax())] for i, d in enumerate(pool)}
    before = server.state.metrics.batch_size.labels("fashion")._sum.get()
    jobs = [("/v1/models/fashion/predict", {"files": {"file": (f"{i % len(pool)}.img", pool[i % len(pool)])}})
            for i in range(128)]
    responses = asyncio.run(_burst(server.url, jobs, 32))
    assert [r.status_code for r in responses] == [200] * len(jobs)
    for response in responses:
        row = response.json()["predictions"][0]
        assert row["top"][0]["label"] == expected[int(row["path"].split(".")[0])]
    batches = server.state.metrics.batch_size.labels("fashion")
    assert batches._sum.get() - before == len(jobs)
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    count = float(next(line.split()[-1] for line in text.splitlines()
                       if line.startswith('headstart_batch_size_count{model="fashion"}')))
    assert count < batches._sum.get(), "32 concurrent clients should have shared batches"
    assert server.state.workers["fashion"].pending == 0


def test_queue_overflow_is_503_and_the_server_stays_healthy(models, holdout):
    png = holdout[1][1].read_bytes()
    # A batch waits up to 3 s to fill: the first request holds the only two places in the queue.
    with serving(models, api_key=KEY, max_queue=2, max_batch_delay_ms=3000, max_batch_size=4, timeout_s=1.5) as slow:
        with slow.client() as c:
            first: list[httpx.Response] = []
            waiter = threading.Thread(target=lambda: first.append(
                c.post("/v1/models/fashion/predict", files=[("file", ("a.png", png)), ("file", ("b.png", png))])))
            waiter.start()
            deadline = time.monotonic() + 30
            while slow.state.workers["fashion"].pending < 2:
                assert time.monotonic() < deadline and waiter.is_alive()
                time.sleep(0.01)
            full = c.post("/v1/models/fashion/predict", files={"file": ("c.png", png)})
            assert_error(full, 503, "queue full")
            assert full.headers["retry-after"] == "1"
            other = c.post("/v1/models/fashion-onnx/predict", files={"file": ("d.png", png)})
            waiter.join(30)
            assert_error(first[0], 504, "timeout_s")  # the batch never filled within the timeout
            assert_error(other, 504)  # the other model has its own queue: admitted, then timed out
            assert c.get("/v2/health/ready").json() == {"ready": True}
            assert slow.state.workers["fashion"].pending == 0
            text = c.get("/metrics").text
            assert 'headstart_rejected_total{model="fashion",reason="queue_full"} 1.0' in text

    # A burst at a small queue: each answer is right or a 503 with Retry-After, and service goes on.
    clf = models["fashion"]
    want = clf.labels[int(expected_proba(clf, png).argmax())]
    with serving(models, api_key=KEY, max_queue=4) as small:
        jobs = [("/v1/predict", {"files": [("file", ("a.png", png)), ("file", ("b.png", png))]})] * 48
        responses = asyncio.run(_burst(small.url, jobs, 32))
        for r in responses:
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"
            else:
                assert [row["top"][0]["label"] for row in r.json()["predictions"]] == [want, want]
        with small.client() as c:
            assert c.get("/v2/health/ready").status_code == 200
            assert c.post("/v1/predict", files={"file": ("a.png", png)}).status_code == 200
        assert small.state.workers["fashion"].pending == 0


# ---------------------------------------------------------------- property-based, from the OpenAPI document


@pytest.mark.slow
def test_api_keeps_to_its_openapi_document(server):
    """Requests generated from /openapi.json (every operation, a bounded number each): no 5xx, and every
    answer has a status, content type and body that the document declares."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    doc = httpx.get(server.url + "/openapi.json", headers=AUTH, timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    def checker(operation: Any) -> Any:
        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call_and_validate(base_url=server.url, headers=dict(AUTH), timeout=60, checks=checks)
            if response.status_code >= 400 and operation.path != "/v2/health/ready":
                body = response.json()
                assert isinstance(body, dict) and isinstance(body.get("error"), str), body

        return check

    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        checker(operation)()
        tested.append(f"{operation.method.upper()} {operation.path}")
    assert len(tested) >= 15, tested
    with server.client() as c:
        assert c.get("/v2/health/ready").status_code == 200
    assert all(w.pending == 0 for w in server.state.workers.values())


# ---------------------------------------------------------------- the command: SIGTERM, torch-free exports, errors

BLOCKER = '''
import importlib.abc, sys

class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "torchvision"):
            raise ImportError(f"{name} is blocked: serving an export must not need it")
        return None

sys.meta_path.insert(0, _Blocker())
'''


def _read_lines(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line)


@pytest.mark.slow
def test_an_export_serves_without_torch_and_sigterm_drains(exported_onnx, holdout, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from headstart.model import load_model

    site = tmp_path / "blocker"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(repo)]), "HEADSTART_API_KEY": KEY,
           "HEADSTART_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("HEADSTART_DEBUG", None)
    # Batches wait 2 s to fill, so a request is surely in flight when the signal comes.
    proc = subprocess.Popen([sys.executable, "-m", "headstart", "serve", "--model", f"shoes={exported_onnx.path}",
                             "--port", "0", "--max_batch_delay_ms", "2000", "--max_batch_size", "4"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=_read_lines, args=(proc.stderr, lines), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            found = [m for line in lines for m in re.findall(r"at (http://127\.0\.0\.1:\d+)", line)]
            url = found[0] if found else None
            time.sleep(0.05)
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
            while True:
                try:
                    if c.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
                time.sleep(0.1)
            assert httpx.get(url + "/v1/models").status_code == 401  # the key came from HEADSTART_API_KEY
            runtime = c.get("/v1/models/shoes").json()["runtime"]
            assert not runtime.startswith("torch")
            label, image = holdout[4]
            clf = load_model(exported_onnx.path)
            want = clf.labels[int(expected_proba(clf, image.read_bytes()).argmax())]
            clf.close()

            answers: list[httpx.Response] = []
            flight = threading.Thread(target=lambda: answers.append(
                c.post("/v1/predict", files={"file": (image.name, image.read_bytes())})))
            flight.start()
            while 'headstart_queue_depth{model="shoes"} 1.0' not in c.get("/metrics").text:
                assert time.monotonic() < deadline and flight.is_alive()
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            while c.get("/v2/health/ready").status_code != 503:  # draining: probes see it at once
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.02)
            late = c.post("/v1/predict", files={"file": (image.name, image.read_bytes())})
            assert_error(late, 503, "shutting down")
            flight.join(60)
        assert answers[0].status_code == 200, answers[0].text
        assert answers[0].json()["predictions"][0]["top"][0]["label"] == want
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    reader.join(10)
    log = "".join(lines)
    assert "Traceback" not in log, log
    # (1 request, or 2 if the last /metrics poll had not quite finished on the server's side)
    assert "stopped" in log and re.search(r"draining: [12] requests in flight", log), log
    assert '"route":"/v1/predict","status":200' in log  # the access log line of the drained request


def test_serve_command_errors_are_one_line(cli, exported_onnx, tmp_path):
    import socket

    code, _, err = cli("serve")
    assert code == 2 and "--model" in err
    code, _, err = cli("serve", "--model", exported_onnx.path, "--max_queue", "0")
    assert code == 2 and "--max_queue" in err and "Traceback" not in err
    code, _, err = cli("serve", "--model", exported_onnx.path, "--port", "70000")
    assert code == 2 and "--port" in err
    code, _, err = cli("serve", "--model", tmp_path / "missing.onnx")
    assert code != 0 and "missing.onnx" in err and "Traceback" not in err and len(err.strip().splitlines()) == 2
    code, _, err = cli("serve", "--model", f"a={exported_onnx.path}", "--model", f"a={exported_onnx.path}")
    assert code == 2 and "two models are named 'a'" in err
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, _, err = cli("serve", "--model", exported_onnx.path, "--port", port)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "hint:" in err
