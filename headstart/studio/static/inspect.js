// Inspect: a run's test numbers with N, per-class precision and recall, the confusion matrix as a
// clickable heat map, the mistakes (most confident first) with one-click fixes, the data doctor's
// findings, and two runs side by side.

import { get, post, del, P, enc, thumbUrl } from "./api.js";
import { state, refreshProject, go } from "./state.js";
import { h, clear, field, toast, showError, confirmDanger, pct, num, plural, runLabel } from "./ui.js";
import { doctorPanel } from "./doctor.js";

export function imageCard(project, item, { caption, actions = [] }) {
  const gone = item.exists === false;
  return h("li", { class: `image-card${gone ? " gone" : ""}`, dataset: { path: item.path } },
    gone ? h("div", { class: "thumb missing", "aria-hidden": "true" }, "moved")
      : h("img", { class: "thumb", src: thumbUrl(project, item.path), alt: item.path, loading: "lazy" }),
    h("div", { class: "card-body" }, caption, gone ? h("p", { class: "muted small" }, "No longer at this path (moved or deleted).") : h("div", { class: "toolbar small" }, actions)));
}

// "Move to <class>" (one click for the suggested class, a menu for any other) and "Delete".
export function fixActions(project, item, suggested, onDone, { canMove = true } = {}) {
  const classes = canMove ? state.data.classes.map((c) => c.name).filter((c) => c !== item.path.split("/")[0]) : [];
  const other = h("select", { "aria-label": `Move ${item.path} to class` }, classes.map((c) => h("option", { value: c, selected: c === suggested }, c)));
  async function move(to) {
    try {
      const r = await post(`${P(project)}/images/move`, { paths: [item.path], to });
      const dest = r.moved.length ? r.moved[0].to : item.path;
      toast(`Moved to ${to}. Train again to see the effect.`);
      onDone(`moved to ${to}`, dest);
    } catch (err) { showError(err); }
  }
  async function remove() {
    if (!(await confirmDanger("Delete image?", `Delete ${item.path}? The file is removed from disk.`))) return;
    try {
      await post(`${P(project)}/images/delete`, { paths: [item.path] });
      toast("Deleted. Train again to see the effect.");
      onDone("deleted");
    } catch (err) { showError(err); }
  }
  return [
    suggested && classes.includes(suggested) ? h("button", { type: "button", class: "primary", onclick: () => move(suggested) }, `Move to ${suggested}`) : null,
    classes.length ? h("span", { class: "inline-move" }, other, h("button", { type: "button", onclick: () => move(other.value) }, "Move")) : null,
    h("button", { type: "button", class: "danger-quiet", onclick: remove }, "Delete"),
  ];
}

function markDone(li, text) {
  li.classList.add("fixed");
  const body = li.querySelector(".card-body .toolbar");
  if (body) body.replaceWith(h("p", { class: "fixed-note" }, `✓ ${text}`));
}

function matrix(project, run, onCell) {
  const labels = run.test.labels || [];
  const cm = run.confusion_matrix || [];
  const table = h("table", { class: "matrix" });
  table.append(h("caption", { class: "visually-hidden" }, "Confusion matrix: rows are the true class, columns the predicted class"));
  const axis = h("tr", {}, h("td", {}), h("th", { scope: "colgroup", colspan: labels.length, class: "axis" }, "predicted →"));
  const head = h("tr", {}, h("th", { scope: "col", class: "corner" }, "true ↓"));
  for (const l of labels) head.append(h("th", { scope: "col", title: l }, h("span", { class: "clip" }, l)));
  table.append(h("thead", {}, axis, head));
  const body = h("tbody");
  cm.forEach((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    const tr = h("tr", {}, h("th", { scope: "row", title: labels[i] }, h("span", { class: "clip" }, labels[i])));
    row.forEach((n, j) => {
      const share = n / total;
      const diag = i === j;
      const alpha = (0.08 + share * 0.85).toFixed(3);
      const button = h("button", { type: "button", class: `cell ${diag ? "diag" : "off"}${n ? "" : " zero"}`,
        style: n ? { background: diag ? `rgba(28, 127, 71, ${alpha})` : `rgba(192, 45, 45, ${alpha})` } : {}, disabled: n === 0,
        "aria-label": `true ${labels[i]}, predicted ${labels[j]}: ${plural(n, "image")}`,
        onclick: () => onCell(labels[i], labels[j]) }, String(n));
      if (share > 0.55) button.classList.add("dark");
      tr.append(h("td", {}, button));
    });
    body.append(tr);
  });
  table.append(body);
  return h("div", { class: "matrix-wrap" }, table);
}

// Precision needs a prediction of the class and recall a test image of it: "–" when there is none.
function classNumbers(run) {
  const labels = (run.test && run.test.labels) || [];
  const cm = run.confusion_matrix || [];
  const out = {};
  for (const [name, m] of Object.entries(run.per_class || {})) {
    const j = labels.indexOf(name);
    const predicted = j >= 0 ? cm.reduce((n, row) => n + row[j], 0) : 1;
    out[name] = { precision: predicted ? m.precision : null, recall: m.support ? m.recall : null, support: m.support };
  }
  return out;
}

function perClass(run) {
  const rows = Object.entries(classNumbers(run));
  return h("div", { class: "table-wrap" }, h("table", { class: "numbers" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Class"), h("th", { scope: "col" }, "Precision"),
      h("th", { scope: "col" }, "Recall"), h("th", { scope: "col" }, "Test images"))),
    h("tbody", {}, rows.map(([name, m]) => h("tr", {}, h("th", { scope: "row" }, name), h("td", {}, pct(m.precision)),
      h("td", {}, pct(m.recall)), h("td", {}, num(m.support)))))),
    rows.some(([, m]) => !m.support) ? h("p", { class: "muted small" }, "–: no test image of that class (or never predicted). Add images for numbers.") : null);
}

function summaryCards(run) {
  const unknown = run.unknown || {};
  return h("div", { class: "cards" },
    h("div", { class: "card" }, h("span", { class: "big-number", id: "inspect-accuracy" }, pct(run.accuracy)),
      h("span", {}, `test accuracy, N = ${num(run.n)}`)),
    h("div", { class: "card" }, h("span", { class: "mid-number" }, pct(run.validation_accuracy)), h("span", {}, "validation accuracy")),
    h("div", { class: "card" }, h("span", { class: "mid-number" }, num(run.misclassified.length)), h("span", {}, "test mistakes")),
    h("div", { class: "card" }, h("span", { class: "mid-number" }, unknown.accepted !== undefined ? pct(unknown.accepted) : "–"),
      h("span", {}, "of test images answered (the rest: “unknown”)")));
}

function compareTable(a, b) {
  const [ca, cb] = [classNumbers(a), classNumbers(b)];
  const classes = [...new Set([...Object.keys(ca), ...Object.keys(cb)])];
  const keys = [...new Set([...Object.keys(a.hyperparameters || {}), ...Object.keys(b.hyperparameters || {})])]
    .filter((k) => JSON.stringify(a.hyperparameters[k]) !== JSON.stringify(b.hyperparameters[k]));
  const row = (label, x, y) => h("tr", {}, h("th", { scope: "row" }, label), h("td", {}, x), h("td", {}, y));
  return h("div", { class: "table-wrap" }, h("table", { class: "numbers compare-table" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, ""), h("th", { scope: "col" }, a.id), h("th", { scope: "col" }, b.id))),
    h("tbody", {},
      row("Test accuracy", `${pct(a.accuracy)} (N = ${num(a.n)})`, `${pct(b.accuracy)} (N = ${num(b.n)})`),
      row("Validation accuracy", pct(a.validation_accuracy), pct(b.validation_accuracy)),
      row("Training images", num(a.splits && a.splits.training), num(b.splits && b.splits.training)),
      classes.map((c) => row(`Recall: ${c}`, pct(ca[c] && ca[c].recall), pct(cb[c] && cb[c].recall))),
      keys.map((k) => row(`Setting: ${k}`, String(a.hyperparameters[k]), String(b.hyperparameters[k]))))));
}

export function render(container) {
  const project = state.project;
  const runs = state.data.runs;
  if (!runs.length) {
    clear(container, h("section", { class: "panel empty-state" }, h("h2", {}, "No runs yet"),
      h("p", {}, "Train a model first; its test numbers, confusion matrix and mistakes appear here."),
      h("button", { type: "button", class: "primary", onclick: () => go("train") }, "Go to Train"),
      h("div", { class: "doctor-slot" })));
    const slot = container.querySelector(".doctor-slot");
    slot.replaceWith(doctorPanel(project));
    return null;
  }
  const runSelect = h("select", { id: "run-select" }, runs.map((r) => h("option", { value: r.id, selected: r.id === state.run }, runLabel(r))));
  const compareSelect = h("select", { id: "compare-select" }, h("option", { value: "" }, "(none)"),
    runs.map((r) => h("option", { value: r.id, selected: r.id === state.compare }, runLabel(r))));
  const deleteButton = h("button", { type: "button", class: "danger-quiet" }, "Delete run");
  const top = h("section", { class: "panel run-pick", "aria-label": "Run" },
    h("div", { class: "run-pickers" }, field("Run", runSelect), field("Compare with", compareSelect), deleteButton));
  const body = h("div", { class: "inspect-body" });
  clear(container, top, body);

  async function show() {
    const run = await get(`${P(project)}/runs/${enc(state.run)}`);
    const cellPanel = h("div", { class: "cell-panel", "aria-live": "polite" });
    const mistakes = h("ul", { class: "image-list", "aria-label": "Misclassified test images" });
    for (const m of run.misclassified) {
      const li = imageCard(project, m, {
        caption: h("p", {}, h("strong", {}, `labelled ${m.label}`), ` · predicted ${m.predicted} (${pct(m.score, 0)})`),
        actions: fixActions(project, m, m.predicted, (text) => markDone(li, text)),
      });
      mistakes.append(li);
    }
    async function openCell(t, p) {
      try {
        const cell = await get(`${P(project)}/runs/${enc(run.id)}/cells?true=${enc(t)}&predicted=${enc(p)}`);
        const list = h("ul", { class: "image-list" });
        for (const item of cell.items) {
          const li = imageCard(project, item, {
            caption: h("p", {}, `predicted ${item.predicted} (${pct(item.score, 0)})${item.unknown ? " · unknown" : ""}`),
            actions: fixActions(project, item, t !== p ? p : null, (text) => markDone(li, text)),
          });
          list.append(li);
        }
        clear(cellPanel, h("h3", {}, `True ${t}, predicted ${p}: ${plural(cell.items.length, "image")}`),
          cell.items.length ? list : h("p", { class: "muted" }, "No images."));
        cellPanel.scrollIntoView({ block: "nearest", behavior: "smooth" });
      } catch (err) { showError(err); }
    }
    const sections = [
      h("section", { class: "panel wide", "aria-label": "Summary" }, h("h2", {}, `Run ${run.id}`),
        h("p", { class: "muted" }, `${run.backbone || ""}${run.fine_tune_blocks ? `, ${run.fine_tune_blocks} stages fine-tuned` : ""} · `
          + `${num(run.splits && run.splits.training)} training, ${num(run.splits && run.splits.validation)} validation, ${num(run.n)} test images`),
        summaryCards(run),
        run.n < 30 ? h("p", { class: "note" }, `Only ${plural(run.n, "test image")}: this accuracy is a rough estimate. `
          + "About a tenth of each class is kept for testing, so more images give a firmer number.") : null),
      h("section", { class: "panel", "aria-label": "Confusion matrix" }, h("h2", {}, "Confusion matrix"),
        h("p", { class: "muted small" }, "Rows: the true class. Columns: what the model answered. Click a cell to see its images."),
        matrix(project, run, openCell), cellPanel),
      h("section", { class: "panel", "aria-label": "Per class" }, h("h2", {}, "Per class"), perClass(run)),
      h("section", { class: "panel wide", "aria-label": "Mistakes" }, h("h2", {}, `Mistakes (${num(run.misclassified.length)})`),
        h("p", { class: "muted small" }, "Test images the model got wrong, most confident first. A confident mistake is often a mislabelled image: move it, or delete it, then train again."),
        run.misclassified.length ? mistakes : h("p", {}, "No mistakes on the test images.")),
    ];
    if (state.compare && state.compare !== run.id) {
      try {
        const other = await get(`${P(project)}/runs/${enc(state.compare)}`);
        sections.splice(1, 0, h("section", { class: "panel wide", "aria-label": "Comparison" }, h("h2", {}, "Side by side"), compareTable(run, other)));
      } catch (err) { showError(err); }
    }
    sections.push(doctorPanel(project));
    clear(body, sections);
  }

  runSelect.addEventListener("change", () => { state.run = runSelect.value; show().catch(showError); });
  compareSelect.addEventListener("change", () => { state.compare = compareSelect.value || null; show().catch(showError); });
  deleteButton.addEventListener("click", async () => {
    if (!(await confirmDanger("Delete run?", `Delete run ${state.run} and its files? The images stay.`))) return;
    try {
      await del(`${P(project)}/runs/${enc(state.run)}`);
      state.run = null;
      await refreshProject();
      go("inspect");
    } catch (err) { showError(err); }
  });
  show().catch(showError);
  return null;
}

