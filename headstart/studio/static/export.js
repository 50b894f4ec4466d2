// Export: a zip of the model as ONNX or OpenVINO IR with its sidecar and a README, or
// `headstart serve` on it with one click.

import { get, post, del, P, enc } from "./api.js";
import { state, go } from "./state.js";
import { h, clear, field, toast, showError, runLabel, spinner } from "./ui.js";

export function render(container) {
  const project = state.project;
  const runs = state.data.runs;
  if (!runs.length) {
    clear(container, h("section", { class: "panel empty-state" }, h("h2", {}, "Nothing to export yet"),
      h("p", {}, "Train a model first."), h("button", { type: "button", class: "primary", onclick: () => go("train") }, "Go to Train")));
    return null;
  }
  const runSelect = h("select", { id: "export-run" }, runs.map((r) => h("option", { value: r.id, selected: r.id === state.run }, runLabel(r))));
  runSelect.addEventListener("change", () => { state.run = runSelect.value; });
  const formats = h("fieldset", { class: "formats" }, h("legend", {}, "Format"),
    state.info.export_formats.map((f, i) => h("label", { class: "radio" },
      h("input", { type: "radio", name: "format", value: f, checked: i === 0 }),
      f === "onnx" ? " ONNX (ONNX Runtime, most platforms)" : " OpenVINO IR (Intel CPUs and GPUs)")));
  const exportButton = h("button", { type: "button", class: "primary", id: "export-button" }, "Build export");
  const exportOut = h("div", { class: "export-out", "aria-live": "polite" });
  exportButton.addEventListener("click", async () => {
    const format = formats.querySelector("input:checked").value;
    exportButton.disabled = true;
    clear(exportOut, h("p", {}, spinner("Exporting"), " Exporting and checking the model against PyTorch (this takes a little while)…"));
    try {
      const r = await post(`${P(project)}/runs/${enc(runSelect.value)}/export`, { format });
      clear(exportOut, h("p", {}, h("a", { href: r.download, download: r.file, class: "button primary", id: "download-link" },
        `Download ${r.file}`), ` (${(r.size / 1e6).toFixed(1)} MB)`),
        h("p", { class: "muted small" }, "The zip holds the model, its .json sidecar (labels, preprocessing, the “unknown” threshold, the self-check) and a README:"),
        h("pre", { class: "snippet" }, `import headstart\n\nmodel = headstart.load_model("${format === "onnx" ? "model-fp32.onnx" : "model-fp32.xml"}")\npredictions, skipped = model.predict_files(["photo.jpg"], top_k=3)\nprint(predictions[0].label, predictions[0].top)`));
      toast("Export ready");
    } catch (err) {
      clear(exportOut, h("div", { class: "error-box", role: "alert" }, h("strong", {}, err.message), err.hint ? h("p", {}, err.hint) : null));
    } finally { exportButton.disabled = false; }
  });

  const serveOut = h("div", { class: "serve-out", "aria-live": "polite" });
  const serveButton = h("button", { type: "button", id: "serve-button" }, "Start headstart serve");
  const stopButton = h("button", { type: "button", hidden: true }, "Stop");
  let poll = null;
  async function showServe() {
    try {
      const s = await get("/api/serve");
      if (!s.available) { serveButton.disabled = true; clear(serveOut, h("p", { class: "muted" }, "headstart serve is not available in this installation.")); return; }
      stopButton.hidden = !(s.state === "ready" || s.state === "starting");
      if (s.state === "ready") {
        clear(serveOut, h("p", {}, "Serving run ", h("strong", {}, s.run), " at ", h("a", { href: s.url, target: "_blank", rel: "noopener" }, s.url)),
          h("pre", { class: "snippet" }, `curl -F file=@photo.jpg ${s.url}/v1/predict`));
      } else if (s.state === "starting") {
        clear(serveOut, h("p", {}, spinner("Starting"), ` Starting on ${s.url}…`));
        poll = setTimeout(showServe, 1000);
      } else if (s.state === "exited") {
        clear(serveOut, h("div", { class: "error-box", role: "alert" }, h("strong", {}, "headstart serve stopped"), h("p", {}, s.message || `exit code ${s.exit_code}`)));
      } else clear(serveOut, h("p", { class: "muted" }, "Not running."));
    } catch (err) { showError(err); }
  }
  serveButton.addEventListener("click", async () => {
    try { await post(`${P(project)}/runs/${enc(runSelect.value)}/serve`, {}); showServe(); } catch (err) { showError(err); }
  });
  stopButton.addEventListener("click", async () => {
    try { await del("/api/serve"); clearTimeout(poll); showServe(); } catch (err) { showError(err); }
  });

  clear(container, h("div", { class: "export" },
    h("section", { class: "panel", "aria-label": "Export" }, h("h2", {}, "Export"), field("Run", runSelect), formats,
      h("div", { class: "toolbar" }, exportButton), exportOut),
    h("section", { class: "panel", "aria-label": "Serve" }, h("h2", {}, "Serve over HTTP"),
      h("p", { class: "muted small" }, "Runs headstart serve on this machine (127.0.0.1 only): a REST API, the Open Inference Protocol and a test page."),
      h("div", { class: "toolbar" }, serveButton, stopButton), serveOut)));
  showServe();
  return () => clearTimeout(poll);
}
