// The data doctor's findings in the Inspect tab: likely label errors, duplicates, leaks, outliers,
// each with a one-click fix (the doctor itself never changes a file).

import { get, post, P, followJob, thumbUrl } from "./api.js";
import { state } from "./state.js";
import { h, clear, toast, showError, confirmDanger, pct, num, plural } from "./ui.js";
import { imageCard, fixActions } from "./inspect.js";

const SHOW = 24; // findings of each kind shown at first

function fixed(li, text) {
  li.classList.add("fixed");
  const bar = li.querySelector(".toolbar");
  if (bar) bar.replaceWith(h("p", { class: "fixed-note" }, `✓ ${text}`));
}

function singles(project, items, caption, suggested, canMove = true) {
  const ul = h("ul", { class: "image-list" });
  for (const item of items.slice(0, SHOW)) {
    const li = imageCard(project, { path: item.path, exists: item.exists !== false }, {
      caption: caption(item),
      actions: fixActions(project, { path: item.path }, suggested(item), (text) => fixed(li, text), { canMove }),
    });
    ul.append(li);
  }
  return ul;
}

// Copies: show the group, keep the one the doctor names, delete the others in one click.
function groups(project, items) {
  const ul = h("ul", { class: "image-list" });
  for (const group of items.slice(0, SHOW)) {
    const others = group.paths.filter((p) => p !== group.path);
    const button = h("button", { type: "button", class: "danger-quiet" }, `Delete ${plural(others.length, "other copy", "other copies")}`);
    const li = h("li", { class: "image-card group-card", dataset: { path: group.path } },
      h("div", { class: "group-thumbs" }, group.paths.slice(0, 4).map((p) => h("img", {
        class: `thumb${p === group.path ? " keep" : ""}`, src: thumbUrl(project, p), alt: p, loading: "lazy" }))),
      h("div", { class: "card-body" }, h("p", {}, group.reason), h("div", { class: "toolbar small" }, button)));
    button.addEventListener("click", async () => {
      if (!(await confirmDanger("Delete copies?", `Keep ${group.path} and delete ${others.join(", ")}?`))) return;
      try {
        const r = await post(`${P(project)}/images/delete`, { paths: others });
        toast(`Deleted ${plural(r.deleted, "copy", "copies")}. Train again to see the effect.`);
        fixed(li, `kept ${group.path}`);
      } catch (err) { showError(err); }
    });
    ul.append(li);
  }
  return ul;
}

function findings(project, report) {
  const f = report.findings || {};
  const s = report.summary || {};
  const parts = [h("p", {}, s.summary || `${num(s.images)} images checked.`)];
  const kinds = [
    ["label_issues", "Likely label errors", (items) => singles(project, items,
      (i) => h("p", {}, h("strong", {}, `labelled ${i.given}`), ` · looks like ${i.suggested} (${pct(i.suggested_probability, 0)})`),
      (i) => i.suggested)],
    ["exact_duplicates", "Exact duplicates", (items) => groups(project, items)],
    ["near_duplicates", "Near duplicates", (items) => groups(project, items)],
    ["leaks", "Leaks between training and test", (items) => singles(project, items, (i) => h("p", {}, i.reason), () => null, false)],
    ["outliers", "Outliers", (items) => singles(project, items, (i) => h("p", {}, i.reason), () => null)],
    ["image_issues", "Image problems", (items) => singles(project, items, (i) => h("p", {}, `${i.kind}: ${i.reason}`), () => null, false)],
  ];
  for (const [key, title, draw] of kinds) {
    // A group whose copies are gone (deleted, moved) has nothing left to fix.
    const items = (f[key] || []).filter((i) => i.path && (!i.paths || (i.paths.length > 1 && i.exists !== false)));
    if (!items.length) continue;
    parts.push(h("h3", {}, `${title} (${num(items.length)})`), draw(items));
    if (items.length > SHOW) parts.push(h("p", { class: "muted small" }, `… and ${num(items.length - SHOW)} more in .studio/doctor.json of the project`));
  }
  if (parts.length === 1) parts.push(h("p", {}, "Nothing to fix was found."));
  return parts;
}

export function doctorPanel(project) {
  const body = h("div", { class: "doctor-body", "aria-live": "polite" });
  const button = h("button", { type: "button", id: "doctor-button" }, "Check the data");
  const panel = h("section", { class: "panel wide", "aria-label": "Data doctor" }, h("h2", {}, "Data doctor"),
    h("p", { class: "muted small" }, "Looks for images whose label disagrees with the rest, copies, copies shared by training and test (leaks), and odd images."),
    h("div", { class: "toolbar" }, button), body);
  if (!state.info.features.doctor) {
    button.disabled = true;
    clear(body, h("p", { class: "muted" }, "The data doctor is not available in this installation."));
    return panel;
  }
  async function load() {
    const d = await get(`${P(project)}/doctor`);
    if (d.job && d.job.state === "running") { follow(d.job); return; }
    if (d.report) clear(body, h("p", { class: "muted small" }, `Checked ${new Date(d.report.created * 1000).toLocaleString()}.`), findings(project, d.report));
  }
  function follow(job) {
    button.disabled = true;
    clear(body, h("p", {}, "Checking…"));
    followJob(project, job.id, (type, d) => {
      if (type === "phase") clear(body, h("p", {}, `${d.message}…`));
      else if (type === "bottlenecks" && d.missing) clear(body, h("p", {}, `Bottlenecks: ${num(d.done)} of ${num(d.missing)}…`));
      else if (type === "error") { clear(body, h("div", { class: "error-box", role: "alert" }, h("strong", {}, d.message), d.hint ? h("p", {}, d.hint) : null)); button.disabled = false; }
      else if (type === "end") { button.disabled = false; load().catch(showError); }
    });
  }
  button.addEventListener("click", async () => {
    try { follow(await post(`${P(project)}/doctor`, {})); } catch (err) { showError(err); }
  });
  load().catch(showError);
  return panel;
}
