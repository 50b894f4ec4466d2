// The studio's shell: the project picker, the tabs, and a router over "#/<project>/<tab>".

import { get, post, P } from "./api.js";
import { state, bus, refreshProject, go } from "./state.js";
import { h, clear, field, showError, toast, num, plural } from "./ui.js";
import * as collect from "./collect.js";
import * as train from "./train.js";
import * as inspect from "./inspect.js";
import * as tryView from "./try.js";
import * as exportView from "./export.js";

const VIEWS = { collect, train, inspect, try: tryView, export: exportView };
const main = document.getElementById("main");
const select = document.getElementById("project-select");
const tabs = [...document.querySelectorAll("[role=tab]")];
let cleanup = null;

function parseHash() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  return { project: parts[0] || null, tab: VIEWS[parts[1]] ? parts[1] : "collect" };
}

async function fillProjects() {
  const { projects } = await get("/api/projects");
  clear(select, h("option", { value: "" }, "All projects…"),
    projects.map((p) => h("option", { value: p.name, selected: p.name === state.project }, p.name)));
  return projects;
}

select.addEventListener("change", () => go("collect", select.value || null));

for (const tab of tabs) {
  tab.addEventListener("click", () => go(tab.dataset.tab));
  tab.addEventListener("keydown", (e) => {
    const i = tabs.indexOf(tab);
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    const next = tabs[(to + tabs.length) % tabs.length];
    next.focus();
    go(next.dataset.tab);
  });
}

function markTabs() {
  document.body.classList.toggle("has-project", Boolean(state.project));
  for (const tab of tabs) {
    const on = Boolean(state.project) && tab.dataset.tab === state.tab;
    tab.setAttribute("aria-selected", on ? "true" : "false");
    tab.tabIndex = on ? 0 : -1;
  }
  if (state.project) main.setAttribute("aria-labelledby", `tab-${state.tab}`);
  else main.removeAttribute("aria-labelledby");
}

async function route() {
  const { project, tab } = parseHash();
  for (const old of document.querySelectorAll("#toasts .toast-error")) old.remove(); // errors belong to their view
  if (cleanup) { try { cleanup(); } catch (err) { console.warn(err); } cleanup = null; }
  const changed = project !== state.project;
  state.project = project;
  state.tab = tab;
  if (changed) { state.cls = null; state.run = null; state.compare = null; }
  markTabs();
  try {
    await fillProjects();
    if (!project) {
      document.title = "headstart studio";
      cleanup = renderHome(main);
      return;
    }
    await refreshProject();
    document.title = `${project} · ${tab} · headstart studio`;
    const container = h("div", { class: `view view-${tab}` });
    clear(main, container);
    cleanup = VIEWS[tab].render(container) || null;
  } catch (err) {
    showError(err);
    if (err.status === 404) clear(main, h("section", { class: "panel" }, h("h1", {}, "Not found"),
      h("p", {}, err.message), h("p", {}, h("a", { href: "#/" }, "See all projects"))));
  }
}

function renderHome(container) {
  const name = h("input", { type: "text", required: true, maxlength: 100, autocomplete: "off", placeholder: "e.g. fruit" });
  const classes = h("input", { type: "text", autocomplete: "off", placeholder: "e.g. apple, banana, orange" });
  const form = h("form", { class: "create-form", "aria-label": "Create a project" },
    field("Project name", name), field("Classes (optional, separated by commas)", classes),
    h("button", { type: "submit", class: "primary" }, "Create project"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const list = classes.value.split(",").map((s) => s.trim()).filter(Boolean);
      const made = await post("/api/projects", { name: name.value, classes: list });
      toast(`Created project ${made.name}`);
      go("collect", made.name);
    } catch (err) { showError(err); }
  });
  const list = h("ul", { class: "project-list", "aria-label": "Projects" });
  const section = h("div", { class: "home" },
    h("section", { class: "panel intro" },
      h("h1", {}, "Teach a model your own images"),
      h("p", {}, "Collect photos of each thing you want recognised, train in seconds on this machine, "
        + "find and fix mistakes, try it live on the camera, and export it."),
      h("p", { class: "muted" }, "Projects are folders of class folders in ", h("code", {}, state.info.data_dir),
        ". Any such folder already there opens here, and ", h("code", {}, "headstart retrain --image_dir"),
        " trains on anything collected here.")),
    h("section", { class: "panel" }, h("h2", {}, "New project"), form),
    h("section", { class: "panel" }, h("h2", {}, "Projects"), list));
  clear(container, section);
  get("/api/projects").then(({ projects }) => {
    if (!projects.length) list.append(h("li", { class: "muted" }, "No projects yet: create one above."));
    for (const p of projects) {
      list.append(h("li", {}, h("a", { href: `#/${encodeURIComponent(p.name)}/collect`, class: "project-card" },
        h("strong", {}, p.name),
        h("span", { class: "muted" }, `${plural(p.classes, "class", "classes")} · ${plural(p.images, "image")} · ${plural(p.runs, "run")}`))));
    }
  }).catch(showError);
  name.focus();
  return null;
}

bus.addEventListener("project", () => {
  const d = state.data;
  if (!d) return;
  const total = d.classes.reduce((n, c) => n + c.count, 0);
  select.title = `${d.name}: ${num(total)} images`;
});

async function start() {
  try {
    state.info = await get("/api/info");
  } catch (err) {
    showError(err);
    return;
  }
  window.addEventListener("hashchange", route);
  route();
}

start();
