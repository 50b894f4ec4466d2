// Small DOM helpers shared by every view: element builder, messages, dialogs, number formats.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "style" && typeof value === "object") {
      for (const [prop, v] of Object.entries(value)) {
        if (prop.startsWith("--")) el.style.setProperty(prop, v);
        else el.style[prop] = v;
      }
    }
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let uid = 0;
export function newId(prefix = "id") {
  uid += 1;
  return `${prefix}-${uid}`;
}

// A labelled form control: <label for> + control (+ help text tied with aria-describedby).
export function field(labelText, control, help) {
  if (!control.id) control.id = newId("f");
  const parts = [h("label", { for: control.id, class: "field-label" }, labelText), control];
  if (help) {
    const helpId = newId("help");
    control.setAttribute("aria-describedby", helpId);
    parts.push(h("small", { id: helpId, class: "help" }, help));
  }
  return h("div", { class: "field" }, parts);
}

// Messages: short ones fade, errors stay until dismissed. The region is aria-live.
export function toast(message, kind = "info", hint = "") {
  const box = document.getElementById("toasts");
  const close = h("button", { class: "toast-close", "aria-label": "Dismiss message", type: "button" }, "×");
  const item = h("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" },
    h("div", { class: "toast-text" }, h("span", { class: "toast-message" }, message),
      hint ? h("span", { class: "toast-hint" }, hint) : null), close);
  close.addEventListener("click", () => item.remove());
  box.append(item);
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => item.remove(), kind === "error" ? 12000 : 4500);
  return item;
}

export function showError(err) {
  console.warn(err);
  toast(err.message || String(err), "error", err.hint || "");
}

// A modal built on <dialog>: resolves with the value of the button pressed (or null on Escape).
export function dialog(title, body, buttons = [{ label: "OK", value: true, primary: true }]) {
  return new Promise((resolve) => {
    const dlg = h("dialog", { class: "dialog", "aria-labelledby": "dialog-title" });
    const row = h("div", { class: "dialog-buttons" });
    for (const b of buttons) {
      row.append(h("button", {
        type: "button", class: b.primary ? "primary" : b.danger ? "danger" : "",
        onclick: () => { dlg.close(); resolve(typeof b.value === "function" ? b.value(dlg) : b.value); },
      }, b.label));
    }
    dlg.append(h("h2", { id: "dialog-title" }, title), h("div", { class: "dialog-body" }, body), row);
    dlg.addEventListener("cancel", () => resolve(null));
    dlg.addEventListener("close", () => dlg.remove());
    document.body.append(dlg);
    dlg.showModal();
    const primary = dlg.querySelector("input, select, button.primary");
    if (primary) primary.focus();
  });
}

export async function confirmDanger(title, text, label = "Delete") {
  return dialog(title, h("p", {}, text), [
    { label: "Cancel", value: false }, { label, value: true, danger: true }]);
}

export async function askText(title, labelText, value = "", okLabel = "Save") {
  const input = h("input", { type: "text", value, maxlength: 100, autocomplete: "off" });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); input.closest("dialog").querySelector("button.primary").click(); }
  });
  return dialog(title, field(labelText, input), [
    { label: "Cancel", value: null }, { label: okLabel, value: () => input.value, primary: true }]);
}

export const pct = (x, digits = 1) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(digits)}\u00a0%`);
export const num = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
export const plural = (n, one, many) => `${num(n)} ${n === 1 ? one : many || `${one}s`}`;

export function runLabel(run) {
  if (!run) return "";
  const when = run.id.replace(/^(\d{4})(\d{2})(\d{2})-(\d{2})(\d{2})(\d{2})/, "$1-$2-$3 $4:$5:$6");
  return `${when} · ${pct(run.accuracy)} on ${num(run.n)}`;
}

export function spinner(label = "Working") {
  return h("span", { class: "spinner", role: "img", "aria-label": label });
}
