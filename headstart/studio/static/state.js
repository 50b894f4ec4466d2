// What the views share: the server's info, the open project, and a bus for "the project changed".

import { get, P, enc } from "./api.js";

export const state = {
  info: null, // GET /api/info
  project: null, // the open project's name
  data: null, // GET /api/projects/{project}
  tab: "collect",
  cls: null, // the class shown in Collect
  run: null, // the run shown in Inspect / Try / Export
  compare: null,
};

export const bus = new EventTarget();

export async function refreshProject() {
  if (!state.project) return null;
  state.data = await get(P(state.project));
  const names = state.data.classes.map((c) => c.name);
  if (!names.includes(state.cls)) state.cls = names[0] || null;
  const runs = state.data.runs.map((r) => r.id);
  if (!runs.includes(state.run)) state.run = runs[0] || null;
  bus.dispatchEvent(new CustomEvent("project", { detail: state.data }));
  return state.data;
}

export function go(tab, project = state.project) {
  const target = project ? `#/${enc(project)}/${tab}` : "#/";
  if (location.hash !== target) location.hash = target;
  else window.dispatchEvent(new HashChangeEvent("hashchange"));
}

export function latestRun() {
  return state.data && state.data.runs.length ? state.data.runs[0] : null;
}
