// Try: live webcam prediction (top-k bars a few times a second, "unknown" when the model says so),
// and dropping or picking an image to label it.

import { api, P, enc } from "./api.js";
import { state, go } from "./state.js";
import { h, clear, field, showError, pct, runLabel } from "./ui.js";
import { camera } from "./camera.js";
import { dropEntries } from "./collect.js";

const LIVE_INTERVAL_MS = 250; // at most 4 predictions a second
const TOP_K = 3;

function bars(result) {
  const answer = result.unknown
    ? h("p", { class: "answer unknown", id: "answer" }, h("span", { class: "badge" }, "Unknown"),
      ` not like any class it knows (closest: ${result.top[0].label})`)
    : h("p", { class: "answer", id: "answer" }, h("strong", { id: "answer-label" }, result.top[0].label), ` · ${pct(result.top[0].score)}`);
  return [answer, h("ol", { class: "bars", "aria-label": "Top answers" }, result.top.map((t) =>
    h("li", {}, h("span", { class: "bar-label" }, t.label),
      h("span", { class: "bar", "aria-hidden": "true" }, h("span", { class: "fill", style: { width: `${(100 * t.score).toFixed(1)}%` } })),
      h("span", { class: "bar-value" }, pct(t.score)))))];
}

export function render(container) {
  const project = state.project;
  const runs = state.data.runs;
  if (!runs.length) {
    clear(container, h("section", { class: "panel empty-state" }, h("h2", {}, "Nothing to try yet"),
      h("p", {}, "Train a model first."), h("button", { type: "button", class: "primary", onclick: () => go("train") }, "Go to Train")));
    return null;
  }
  const runSelect = h("select", {}, runs.map((r) => h("option", { value: r.id, selected: r.id === state.run }, runLabel(r))));
  runSelect.addEventListener("change", () => { state.run = runSelect.value; });
  const output = h("div", { class: "prediction", id: "prediction", "aria-live": "polite" }, h("p", { class: "muted" }, "Drop an image or start the live camera."));
  const previewImg = h("img", { class: "try-preview", alt: "The image being labelled", hidden: true });
  const rate = h("p", { class: "muted small", id: "live-rate" });
  const liveButton = h("button", { type: "button", class: "primary", "aria-pressed": "false" }, "Start live prediction");
  const camBox = h("div", { class: "camera-box" });
  let live = false;
  let timer = null;
  let lastUrl = null;

  async function predictBlob(blob, name) {
    const url = `${P(project)}/runs/${enc(runSelect.value)}/predict?top_k=${TOP_K}&filename=${enc(name)}`;
    return api("POST", url, blob);
  }

  async function loop() {
    if (!live) return;
    const t0 = performance.now();
    try {
      const blob = await camera.capture(320, 0.85);
      const result = await predictBlob(blob, "camera.jpg");
      if (!live) return;
      clear(output, bars(result));
      rate.textContent = `${(1000 / Math.max(LIVE_INTERVAL_MS, performance.now() - t0)).toFixed(1)} predictions a second`;
    } catch (err) {
      showError(err);
      setLive(false);
      return;
    }
    timer = setTimeout(loop, Math.max(0, LIVE_INTERVAL_MS - (performance.now() - t0)));
  }

  async function setLive(on) {
    if (on) {
      try { await camera.start(); } catch (err) { showError(err); return; }
    }
    live = on;
    liveButton.textContent = on ? "Stop live prediction" : "Start live prediction";
    liveButton.setAttribute("aria-pressed", on ? "true" : "false");
    clear(camBox, camera.running ? camera.video : h("div", { class: "camera-off" }, "Camera off"));
    if (camera.running) camera.video.play().catch(() => {});
    previewImg.hidden = true;
    if (on) loop();
    else { clearTimeout(timer); rate.textContent = ""; }
  }
  liveButton.addEventListener("click", () => setLive(!live));

  async function labelFile(file) {
    setLive(false);
    if (lastUrl) URL.revokeObjectURL(lastUrl);
    lastUrl = URL.createObjectURL(file);
    previewImg.src = lastUrl;
    previewImg.hidden = false;
    clear(output, h("p", { class: "muted" }, `Labelling ${file.name}…`));
    try {
      const result = await predictBlob(file, file.name);
      clear(output, h("p", { class: "muted small" }, file.name), bars(result));
    } catch (err) {
      clear(output, h("div", { class: "error-box", role: "alert" }, h("strong", {}, err.message), err.hint ? h("p", {}, err.hint) : null));
    }
  }

  const fileInput = h("input", { type: "file", accept: "image/*", id: "try-file", class: "visually-hidden" });
  fileInput.addEventListener("change", () => { if (fileInput.files[0]) labelFile(fileInput.files[0]); fileInput.value = ""; });
  const drop = h("div", { class: "dropzone", id: "try-drop", tabindex: "0", role: "button",
    "aria-label": "Drop an image here, or press Enter to choose one" },
    h("p", {}, h("strong", {}, "Drop an image here"), " or ", h("label", { for: "try-file", class: "link" }, "choose a file")), fileInput);
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fileInput.click(); } });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("dragging"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("dragging");
    const items = await dropEntries(e)();
    if (items.length) labelFile(items[0].file);
  });

  clear(container, h("div", { class: "try" },
    h("section", { class: "panel", "aria-label": "Input" }, h("h2", {}, "Try the model"), field("Model (run)", runSelect),
      h("h3", {}, "Live camera"), camBox, h("div", { class: "toolbar" }, liveButton), rate,
      h("h3", {}, "An image"), drop),
    h("section", { class: "panel", "aria-label": "Answer" }, h("h2", {}, "Answer"), previewImg, output)));
  clear(camBox, camera.running ? camera.video : h("div", { class: "camera-off" }, "Camera off"));
  return () => { live = false; clearTimeout(timer); if (lastUrl) URL.revokeObjectURL(lastUrl); };
}
