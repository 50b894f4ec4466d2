// Collect: classes with counts, a virtual grid of the chosen class, uploads (files, folders, drops)
// and the webcam (one snapshot, or hold to record a few frames a second).

import { get, post, patch, del, P, enc, thumbUrl, fileUrl, uploadFiles } from "./api.js";
import { state, refreshProject } from "./state.js";
import { h, clear, field, toast, showError, dialog, confirmDanger, askText, num, plural } from "./ui.js";
import { VirtualGrid } from "./grid.js";
import { camera, holdButton } from "./camera.js";

const RECORD_FPS = 4;

// Files of a drop, folders walked (entries must be taken during the event, so this runs at once).
export function dropEntries(event) {
  const dt = event.dataTransfer;
  const entries = [...(dt.items || [])].map((i) => (i.kind === "file" && i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
  if (!entries.length || entries.some((e) => !e)) {
    const files = [...dt.files];
    return async () => files.map((f) => ({ file: f, path: f.name }));
  }
  return async () => {
    const out = [];
    async function walk(entry, prefix) {
      if (entry.name.startsWith(".")) return;
      if (entry.isFile) {
        const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
        out.push({ file, path: prefix + file.name });
      } else if (entry.isDirectory) {
        const reader = entry.createReader();
        for (;;) {
          const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
          if (!batch.length) break;
          for (const child of batch) await walk(child, `${prefix}${entry.name}/`);
        }
      }
    }
    for (const entry of entries) await walk(entry, "");
    return out;
  };
}

// "fruit/apple/1.jpg" -> apple; "apple/1.jpg" -> apple; "1.jpg" -> the fallback class.
function groupByClass(items, fallback) {
  const parts = items.map((it) => it.path.split("/").filter(Boolean));
  const tops = new Set(parts.map((p) => (p.length >= 3 ? p[0] : null)));
  const strip = tops.size === 1 && !tops.has(null);
  const groups = new Map();
  items.forEach((it, i) => {
    const p = strip ? parts[i].slice(1) : parts[i];
    const cls = p.length >= 2 ? p[0] : fallback;
    if (!cls) return;
    if (!groups.has(cls)) groups.set(cls, []);
    groups.get(cls).push(it.file);
  });
  return groups;
}

export function render(container) {
  const project = state.project;
  let grid = null;
  let stopCamListener = null;
  const status = h("div", { class: "upload-status", role: "status", "aria-live": "polite" });
  const problems = h("div", { class: "upload-problems" });
  const classList = h("ul", { class: "class-list", "aria-label": "Classes" });
  const classView = h("section", { class: "panel class-view", "aria-label": "Images of the chosen class" });

  // ---------------------------------------------------------------- uploads
  async function send(groups, { quiet = false } = {}) {
    const limitMb = state.info.max_upload_mb;
    let added = 0;
    let duplicate = 0;
    const errors = [];
    for (const [cls, files] of groups) {
      if (!state.data.classes.some((c) => c.name === cls)) {
        try { await post(`${P(project)}/classes`, { name: cls }); } catch (err) {
          if (err.status !== 409) { errors.push(`${cls}: ${err.message}`); continue; }
        }
      }
      const r = await uploadFiles(project, cls, files, {
        limitMb,
        onProgress: (done, total) => { if (!quiet) status.textContent = `Adding to ${cls}: ${num(done)} of ${num(total)} files…`; },
      });
      added += r.added;
      duplicate += r.duplicate;
      errors.push(...r.errors);
    }
    if (!quiet || errors.length) {
      status.textContent = `Added ${plural(added, "image")}` + (duplicate ? `, ${num(duplicate)} already there` : "")
        + (errors.length ? `, ${num(errors.length)} refused` : "") + ".";
    }
    showProblems(errors); // listed next to the status line (an aria-live region) of the class shown
    await refreshProject();
    drawClasses();
    if (grid) await showClass(state.cls, false);
    return { added, duplicate, errors };
  }

  function showProblems(errors) {
    if (!errors.length) { clear(problems); return; }
    clear(problems, h("details", { class: "problems", open: errors.length <= 5 },
      h("summary", {}, `${plural(errors.length, "file was", "files were")} not added`),
      h("ul", {}, errors.slice(0, 200).map((e) => h("li", {}, e))),
      errors.length > 200 ? h("p", { class: "muted" }, `… and ${num(errors.length - 200)} more`) : null));
  }

  function pickerButton(label, { directory = false, target = () => state.cls, importing = false } = {}) {
    const input = h("input", { type: "file", multiple: true, accept: directory ? null : "image/*", class: "visually-hidden",
      tabindex: "-1", "aria-hidden": "true" });
    if (directory) { input.webkitdirectory = true; input.setAttribute("webkitdirectory", ""); }
    const button = h("button", { type: "button", onclick: () => input.click() }, label);
    input.addEventListener("change", async () => {
      const files = [...input.files].filter((f) => !f.name.startsWith("."));
      input.value = "";
      if (!files.length) return;
      const items = files.map((f) => ({ file: f, path: f.webkitRelativePath || f.name }));
      const groups = importing ? groupByClass(items, target()) : new Map([[target(), files]]);
      if (!importing && !target()) { toast("Create a class first", "error"); return; }
      await send(groups);
    });
    return h("span", { class: "picker" }, button, input);
  }

  function dropZone(el, target, importing = false) {
    el.addEventListener("dragover", (e) => { if ([...e.dataTransfer.types].includes("Files")) { e.preventDefault(); el.classList.add("dragging"); } });
    el.addEventListener("dragleave", (e) => { if (!el.contains(e.relatedTarget)) el.classList.remove("dragging"); });
    el.addEventListener("drop", async (e) => {
      e.preventDefault();
      e.stopPropagation();
      el.classList.remove("dragging");
      const read = dropEntries(e);
      const items = await read();
      const cls = target();
      const groups = importing ? groupByClass(items, cls) : new Map([[cls, items.map((it) => it.file)]]);
      if (!groups.size || (!importing && !cls)) { toast("Create a class first, then drop images on it", "error"); return; }
      await send(groups);
    });
  }

  // ---------------------------------------------------------------- classes
  function drawClasses() {
    clear(classList);
    if (!state.data.classes.length) classList.append(h("li", { class: "muted empty-note" }, "No classes yet."));
    for (const c of state.data.classes) {
      const current = c.name === state.cls;
      const button = h("button", { type: "button", class: "class-item", "aria-current": current ? "true" : null,
        onclick: () => { state.cls = c.name; drawClasses(); showClass(c.name); } },
        h("span", { class: "class-name" }, c.name), h("span", { class: "count", "aria-label": `${c.count} images` }, num(c.count)));
      const li = h("li", {}, button);
      dropZone(li, () => c.name);
      classList.append(li);
    }
    drawCameraTarget();
  }

  const newClass = h("input", { type: "text", maxlength: 100, autocomplete: "off", placeholder: "e.g. cat" });
  const addForm = h("form", { class: "add-class", "aria-label": "Add a class" },
    field("New class", newClass), h("button", { type: "submit" }, "Add class"));
  addForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const made = await post(`${P(project)}/classes`, { name: newClass.value });
      newClass.value = "";
      state.cls = made.name;
      await refreshProject();
      drawClasses();
      showClass(made.name);
      toast(`Added class ${made.name}`);
    } catch (err) { showError(err); newClass.focus(); }
  });

  // ---------------------------------------------------------------- camera
  const camStatus = h("p", { class: "camera-target muted" });
  const camToggle = h("button", { type: "button" }, "Start camera");
  const snap = h("button", { type: "button", class: "primary" }, "Snapshot");
  let recorded = 0;
  let refreshTimer = null;
  async function addFrame() {
    if (!state.cls) { toast("Create a class first", "error"); return; }
    const blob = await camera.capture();
    const file = new File([blob], `camera-${Date.now()}.jpg`, { type: "image/jpeg" });
    const r = await uploadFiles(project, state.cls, [file], { limitMb: state.info.max_upload_mb });
    if (r.errors.length) { toast(r.errors[0], "error"); return; }
    if (!r.added) { status.textContent = `That frame is already in the project (the picture did not change).`; return; }
    recorded += r.added;
    const c = state.data.classes.find((x) => x.name === state.cls);
    if (c && r.count !== null) c.count = r.count;
    status.textContent = `${plural(recorded, "camera frame")} added to ${state.cls}.`;
    if (!refreshTimer) refreshTimer = setTimeout(() => { refreshTimer = null; drawClasses(); showClass(state.cls, false); }, 700);
  }
  const hold = holdButton("Hold to record", RECORD_FPS, () => addFrame().catch(showError));
  snap.addEventListener("click", () => addFrame().catch(showError));
  camToggle.addEventListener("click", async () => {
    try { if (camera.running) camera.stop(); else await camera.start(); } catch (err) { showError(err); }
  });
  const camBox = h("div", { class: "camera-box" });
  function drawCamera() {
    camToggle.textContent = camera.running ? "Stop camera" : "Start camera";
    snap.disabled = hold.disabled = !camera.running;
    clear(camBox, camera.running ? camera.video : h("div", { class: "camera-off" }, "Camera off"));
    if (camera.running) camera.video.play().catch(() => {});
  }
  function drawCameraTarget() {
    camStatus.textContent = state.cls ? `Frames go to: ${state.cls}` : "Add a class to collect frames";
  }
  stopCamListener = camera.onChange(drawCamera);
  drawCamera();

  // ---------------------------------------------------------------- one class
  const selection = h("div", { class: "selection-bar", hidden: true });
  let headCount = null;
  const deleteClassButton = h("button", { type: "button", class: "danger-quiet" }, "Delete class");
  async function showClass(cls, fresh = true) {
    if (!cls) {
      if (grid) { grid.destroy(); grid = null; }
      clear(classView, h("div", { class: "empty-state" }, h("h2", {}, "Start with a class"),
        h("p", {}, "Add a class on the left (for example “cat”), then add its images from files, folders or the camera."),
        h("p", { class: "muted" }, "A classifier needs at least two classes.")));
      return;
    }
    const info = state.data.classes.find((c) => c.name === cls) || { name: cls, count: 0 };
    if (!fresh && grid && grid.cls === cls) {
      const page = await get(`${P(project)}/classes/${enc(cls)}/images?offset=0&limit=1`);
      headCount.textContent = plural(page.total, "image");
      deleteClassButton.hidden = page.total > 0;
      await grid.reload(page.total);
      return;
    }
    if (grid) grid.destroy();
    grid = new VirtualGrid({
      label: `Images of ${cls}`,
      fetchPage: (offset, limit) => get(`${P(project)}/classes/${enc(cls)}/images?offset=${offset}&limit=${limit}`),
      thumb: (item) => thumbUrl(project, item.path, item.v),
      onOpen: (item) => preview(item),
      onDelete: () => deleteSelected(),
      onSelect: (sel) => drawSelection(sel),
    });
    grid.cls = cls;
    headCount = h("span", { class: "muted count-line" }, plural(info.count, "image"));
    const actions = h("div", { class: "toolbar", role: "toolbar", "aria-label": `Actions for ${cls}` },
      pickerButton("Add images…"), pickerButton("Add a folder…", { directory: true }),
      h("button", { type: "button", onclick: () => rename(cls) }, "Rename"), deleteClassButton);
    deleteClassButton.onclick = () => removeClass(cls);
    deleteClassButton.hidden = info.count > 0;
    clear(classView, h("div", { class: "class-head" }, h("h2", {}, cls), headCount), actions, status, problems, selection,
      h("p", { class: "hint muted" }, "Click to select (Shift for a range), double-click or Enter to open; drop files or folders anywhere here."),
      grid.root);
    await grid.reload(info.count);
  }
  dropZone(classView, () => state.cls);

  function drawSelection(sel) {
    if (!sel.size) { selection.hidden = true; clear(selection); return; }
    const others = state.data.classes.filter((c) => c.name !== state.cls);
    const to = h("select", {}, others.map((c) => h("option", { value: c.name }, c.name)));
    selection.hidden = false;
    clear(selection, h("strong", {}, `${num(sel.size)} selected`),
      others.length ? [h("label", { class: "inline" }, "Move to ", to),
        h("button", { type: "button", onclick: () => moveSelected(to.value) }, "Move")] : null,
      h("button", { type: "button", class: "danger-quiet", onclick: () => deleteSelected() }, "Delete"),
      h("button", { type: "button", onclick: () => grid.selectLoaded() }, "Select all loaded"),
      h("button", { type: "button", onclick: () => grid.clearSelection() }, "Clear selection"));
  }

  async function moveSelected(to, paths = [...grid.selected]) {
    if (!paths.length || !to) return;
    try {
      const r = await post(`${P(project)}/images/move`, { paths, to });
      toast(`Moved ${plural(r.moved.length, "image")} to ${to}`);
      await refreshProject();
      drawClasses();
      await showClass(state.cls, false);
    } catch (err) { showError(err); }
  }

  async function deleteSelected(paths = grid ? [...grid.selected] : []) {
    if (!paths.length) return;
    if (!(await confirmDanger("Delete images?", `Delete ${plural(paths.length, "image")} from ${state.cls}? The files are removed from disk.`))) return;
    try {
      const r = await post(`${P(project)}/images/delete`, { paths });
      toast(`Deleted ${plural(r.deleted, "image")}`);
      await refreshProject();
      drawClasses();
      await showClass(state.cls, false);
    } catch (err) { showError(err); }
  }

  async function preview(item) {
    const others = state.data.classes.filter((c) => c.name !== state.cls);
    const to = h("select", {}, others.map((c) => h("option", { value: c.name }, c.name)));
    const body = h("div", { class: "preview" }, h("img", { src: fileUrl(project, item.path), alt: item.name }),
      h("p", { class: "muted" }, `${item.path} · ${(item.size / 1024).toFixed(0)} KB`),
      others.length ? field("Move to class", to) : null);
    const choice = await dialog(item.name, body, [
      { label: "Close", value: null },
      { label: "Delete", value: "delete", danger: true },
      ...(others.length ? [{ label: "Move", value: "move", primary: true }] : [])]);
    if (choice === "move") await moveSelected(to.value, [item.path]);
    if (choice === "delete") await deleteSelected([item.path]);
  }

  async function rename(cls) {
    const name = await askText(`Rename ${cls}`, "New name", cls);
    if (name === null || name === cls) return;
    try {
      const r = await patch(`${P(project)}/classes/${enc(cls)}`, { name });
      state.cls = r.name;
      await refreshProject();
      drawClasses();
      showClass(r.name);
      toast(`Renamed ${cls} to ${r.name}`);
    } catch (err) { showError(err); }
  }

  async function removeClass(cls) {
    if (!(await confirmDanger("Delete class?", `Delete the empty class ${cls}?`))) return;
    try {
      await del(`${P(project)}/classes/${enc(cls)}`);
      state.cls = null;
      await refreshProject();
      drawClasses();
      showClass(state.cls);
    } catch (err) { showError(err); }
  }

  // ---------------------------------------------------------------- layout
  const importNote = h("p", { class: "muted small" }, "Drop a folder of class folders on this panel to add them all.");
  const side = h("section", { class: "panel classes-panel", "aria-label": "Classes" },
    h("h2", {}, "Classes"), classList, addForm,
    h("div", { class: "import-row" }, pickerButton("Import class folders…", { directory: true, importing: true })), importNote);
  const cam = h("section", { class: "panel camera", "aria-label": "Camera" }, h("h2", {}, "Camera"), camBox, camStatus,
    h("div", { class: "toolbar" }, camToggle, snap, hold),
    h("p", { class: "muted small" }, `Hold to record takes ${RECORD_FPS} frames a second while pressed (mouse, touch, Space or Enter).`));
  dropZone(side, () => state.cls, true);
  clear(container, h("div", { class: "collect" }, side, classView, cam));
  drawClasses();
  showClass(state.cls);
  return () => {
    if (grid) grid.destroy();
    if (stopCamListener) stopCamListener();
    if (refreshTimer) clearTimeout(refreshTimer);
  };
}
