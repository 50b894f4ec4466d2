// Train: the settings form (main fields, advanced folded away) and the live progress of a run:
// bottlenecks computed or read from the cache, then the training curves as they grow, then the result.

import { post, P, followJob } from "./api.js";
import { state, refreshProject, go } from "./state.js";
import { h, clear, field, showError, pct, num, plural } from "./ui.js";
import { LineChart } from "./chart.js";

const BLOCK_CHOICES = [["0", "0: the last layer only (fastest)"], ["1", "1 stage"], ["2", "2 stages"],
  ["3", "3 stages"], ["all", "all: the whole network (slow on a CPU)"]];

function storedSettings(project) {
  try { return JSON.parse(localStorage.getItem(`headstart-studio:settings:${project}`) || "{}"); } catch { return {}; }
}

function control(f, value) {
  const v = value !== undefined ? value : f.default;
  if (f.kind === "bool") return h("input", { type: "checkbox", name: f.name, checked: Boolean(v) });
  if (f.kind === "blocks") {
    return h("select", { name: f.name }, BLOCK_CHOICES.map(([val, label]) => h("option", { value: val, selected: String(v) === val }, label)));
  }
  if (f.choices) {
    return h("select", { name: f.name }, f.choices.map((c) => h("option", { value: c.value, selected: String(v) === String(c.value) }, c.label)));
  }
  if (f.kind === "int" || f.kind === "float") {
    return h("input", { type: "number", name: f.name, value: v === null ? "" : v, step: f.kind === "int" ? "1" : "any", inputmode: "decimal" });
  }
  return h("input", { type: "text", name: f.name, value: v === null ? "" : v });
}

function readForm(form, fields) {
  const out = {};
  for (const f of fields) {
    const el = form.elements[f.name];
    if (!el) continue;
    if (f.kind === "bool") out[f.name] = el.checked;
    else if (el.value !== "") out[f.name] = f.kind === "int" || f.kind === "float" ? Number(el.value) : el.value;
  }
  return out;
}

export function render(container) {
  const project = state.project;
  const fields = state.info.settings.filter((f) => f.name !== "fine_tune_blocks" || state.info.features.fine_tune);
  const saved = storedSettings(project);
  const form = h("form", { class: "settings", "aria-label": "Training settings" });
  const mainFields = h("div", { class: "field-grid" });
  const advanced = h("div", { class: "field-grid" });
  for (const f of fields) {
    const el = control(f, saved[f.name]);
    const row = f.kind === "bool" ? h("div", { class: "field check" }, h("label", {}, el, ` ${f.label}`), h("small", { class: "help" }, f.help))
      : field(f.label, el, f.help);
    (f.main ? mainFields : advanced).append(row);
  }
  const trainButton = h("button", { type: "submit", class: "primary big", id: "train-button" }, "Train");
  const cancelButton = h("button", { type: "button", hidden: true }, "Cancel");
  const resetButton = h("button", { type: "button", class: "quiet" }, "Reset to defaults");
  form.append(mainFields, h("details", { class: "advanced" }, h("summary", {}, "Advanced settings"), advanced),
    h("div", { class: "toolbar" }, trainButton, cancelButton, resetButton));

  const classes = state.data.classes;
  const total = classes.reduce((n, c) => n + c.count, 0);
  const ready = classes.filter((c) => c.count > 0).length >= 2 && classes.every((c) => c.count > 0);
  const dataNote = h("p", { class: ready ? "muted" : "warning" }, ready
    ? `${plural(total, "image")} in ${plural(classes.length, "class", "classes")}: ${classes.map((c) => `${c.name} ${num(c.count)}`).join(", ")}.`
    : "Training needs at least two classes, each with images. Add them in Collect.");

  // ---------------------------------------------------------------- progress
  const phaseText = h("p", { class: "phase", id: "train-phase" }, "Not started.");
  const indexText = h("p", { class: "muted" });
  const bar = h("progress", { max: 1, value: 0, "aria-label": "Bottlenecks computed" });
  const barText = h("p", { class: "muted", id: "bottleneck-text" });
  const accChart = new LineChart({ title: "Accuracy during training", yMax: 1, format: (v) => `${Math.round(v * 100)}%`,
    series: [{ key: "train_accuracy", label: "training batch", cls: "s1" }, { key: "validation_accuracy", label: "validation", cls: "s2" }] });
  const lossChart = new LineChart({ title: "Loss (cross-entropy) during training",
    series: [{ key: "cross_entropy", label: "training batch", cls: "s1" }, { key: "validation_cross_entropy", label: "validation", cls: "s2" }] });
  const stepText = h("p", { class: "muted", id: "step-text" });
  const result = h("div", { class: "result", id: "train-result", "aria-live": "polite" });
  const logs = h("ul", { class: "logs", "aria-label": "Messages from training" });
  const legend = h("p", { class: "legend" }, h("span", { class: "key s1" }, "training batch"), h("span", { class: "key s2" }, "validation"));
  const progress = h("section", { class: "panel train-progress", "aria-label": "Training progress" },
    h("h2", {}, "Progress"), phaseText, indexText,
    h("div", { class: "stage" }, h("h3", {}, "Bottlenecks"), bar, barText),
    h("div", { class: "stage" }, h("h3", {}, "Training curves"), legend, h("div", { class: "charts" }, accChart.el, lossChart.el), stepText),
    result, logs);

  let stop = null;
  function follow(job) {
    if (stop) stop();
    accChart.reset(job.settings && job.settings.how_many_training_steps);
    lossChart.reset(job.settings && job.settings.how_many_training_steps);
    clear(result);
    clear(logs);
    bar.value = 0;
    barText.textContent = "";
    stepText.textContent = "";
    const running = job.state === "running";
    trainButton.disabled = running;
    cancelButton.hidden = !running;
    cancelButton.onclick = async () => {
      // Said before the request: the job's "cancelled" event can arrive before the request's answer does,
      // and "Cancelling…" written after it would stay on the page for good.
      phaseText.textContent = "Cancelling…";
      try { await post(`${P(project)}/jobs/${encodeURIComponent(job.id)}/cancel`); } catch (err) { showError(err); }
    };
    stop = followJob(project, job.id, (type, d) => {
      if (type === "phase") phaseText.textContent = `${d.message}…`;
      else if (type === "index") indexText.textContent = `${plural(d.images, "image")} in ${d.classes.length} classes: ${num(d.splits.training)} for training, ${num(d.splits.validation)} for validation, ${num(d.splits.testing)} for testing.`;
      else if (type === "bottlenecks") {
        bar.max = Math.max(1, d.missing);
        bar.value = d.missing ? d.done : 1;
        barText.textContent = d.missing
          ? `${num(d.done)} of ${num(d.missing)} new images through the network · ${num(d.cached)} from the cache`
          : `All ${num(d.total)} from the cache: the network did not run.`;
      } else if (type === "step") {
        accChart.xMax = lossChart.xMax = d.total;
        accChart.add(d);
        lossChart.add(d);
        stepText.textContent = `Step ${num(d.step + 1)} of ${num(d.total)} · training batch ${pct(d.train_accuracy, 0)}`
          + (d.validation_accuracy !== null ? ` · validation ${pct(d.validation_accuracy, 0)}` : "");
      } else if (type === "log" && d.level !== "info") logs.append(h("li", { class: `log-${d.level}` }, d.message));
      else if (type === "result") showResult(d);
      else if (type === "done") {
        phaseText.textContent = `Done in ${d.seconds.toFixed(1)} s.`;
        const last = accChart.points[accChart.points.length - 1];
        if (last && last.step + 1 < last.total) stepText.textContent += " · early stopping ended it: the validation loss had stopped improving";
        finish();
      } else if (type === "error") {
        phaseText.textContent = "Training stopped.";
        clear(result, h("div", { class: "error-box", role: "alert" }, h("strong", {}, d.message), d.hint ? h("p", {}, d.hint) : null));
        finish();
      } else if (type === "cancelled") { phaseText.textContent = "Cancelled."; finish(); }
      else if (type === "lost") { phaseText.textContent = "Lost the connection to the studio."; finish(); }
    });
  }

  function showResult(d) {
    state.run = d.run; // Inspect, Try and Export open the newest run
    clear(result, h("div", { class: "result-card", dataset: { run: d.run } },
      h("span", { class: "big-number", id: "result-accuracy" }, pct(d.accuracy)),
      h("span", {}, `test accuracy on ${plural(d.n, "image")} the model never saw`),
      h("span", { class: "muted" }, `run ${d.run} · ${d.seconds.toFixed(1)} s` + (d.computed !== null ? ` · ${plural(d.computed, "new bottleneck")}` : "")),
      h("div", { class: "toolbar" },
        h("button", { type: "button", class: "primary", onclick: () => { state.run = d.run; go("inspect"); } }, "Inspect this run"),
        h("button", { type: "button", onclick: () => { state.run = d.run; go("try"); } }, "Try it"))));
  }

  async function finish() {
    trainButton.disabled = false;
    cancelButton.hidden = true;
    try { await refreshProject(); } catch (err) { showError(err); }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const settings = readForm(form, fields);
    localStorage.setItem(`headstart-studio:settings:${project}`, JSON.stringify(settings));
    trainButton.disabled = true;
    clear(result);
    phaseText.textContent = "Starting…";
    try {
      const job = await post(`${P(project)}/train`, settings);
      phaseText.textContent = "Starting…";
      follow(job);
    } catch (err) {
      trainButton.disabled = false;
      phaseText.textContent = "Not started.";
      clear(result, h("div", { class: "error-box", role: "alert" }, h("strong", {}, err.message), err.hint ? h("p", {}, err.hint) : null));
    }
  });
  resetButton.addEventListener("click", () => {
    localStorage.removeItem(`headstart-studio:settings:${project}`);
    go("train");
  });

  clear(container, h("div", { class: "train" },
    h("section", { class: "panel train-form", "aria-label": "Train a model" }, h("h2", {}, "Train"), dataNote, form),
    progress));
  if (state.data.job) follow(state.data.job);
  return () => { if (stop) stop(); };
}
