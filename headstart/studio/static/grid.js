// A virtual grid of thumbnails: only the rows on screen exist in the page, and names arrive in pages
// of 200 as they scroll into view, so a class of 20,000 images costs what a screenful costs.
// Keyboard: arrows/Home/End/PageUp/PageDown move, Space selects, Enter opens, Delete deletes.

import { h, newId } from "./ui.js";

const PAGE = 200;
const GAP = 8;
const BUFFER_ROWS = 2;

export class VirtualGrid {
  constructor({ label, fetchPage, thumb, onOpen, onDelete, onSelect, minCell = 104 }) {
    this.fetchPage = fetchPage;
    this.thumb = thumb;
    this.onOpen = onOpen;
    this.onDelete = onDelete;
    this.onSelect = onSelect;
    this.minCell = minCell;
    this.total = 0;
    this.pages = new Map();
    this.loading = new Set();
    this.cells = new Map();
    this.selected = new Set();
    this.active = 0;
    this.id = newId("grid");
    this.space = h("div", { class: "vgrid-space" });
    this.el = h("div", {
      class: "vgrid", id: this.id, role: "listbox", tabindex: "0", "aria-multiselectable": "true",
      "aria-label": label,
    }, this.space);
    this.empty = h("p", { class: "vgrid-empty", hidden: true },
      "No images yet. Drop files or folders here, pick them with the buttons above, or use the camera.");
    this.root = h("div", { class: "vgrid-wrap" }, this.el, this.empty);
    this.el.addEventListener("scroll", () => this.schedule(), { passive: true });
    this.el.addEventListener("keydown", (e) => this.key(e));
    this.el.addEventListener("focus", () => this.markActive());
    this.resizer = new ResizeObserver(() => this.schedule(true));
    this.resizer.observe(this.el);
  }

  destroy() {
    this.resizer.disconnect();
    this.destroyed = true;
  }

  async reload(total) {
    this.pages.clear();
    this.selected.clear();
    this.total = total;
    this.active = Math.min(this.active, Math.max(0, total - 1));
    for (const cell of this.cells.values()) cell.remove();
    this.cells.clear();
    this.onSelect && this.onSelect(this.selected);
    this.schedule(true);
  }

  schedule(relayout = false) {
    if (relayout) this.layoutDirty = true;
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = null; this.render(); });
  }

  layout() {
    const width = this.el.clientWidth - 2 * GAP;
    const min = width < 480 ? Math.min(this.minCell, 84) : this.minCell; // three columns on a phone
    this.cols = Math.max(2, Math.floor((width + GAP) / (min + GAP)));
    this.size = Math.floor((width - GAP * (this.cols - 1)) / this.cols);
    this.rowH = this.size + GAP;
    this.rows = Math.ceil(this.total / this.cols);
    this.space.style.height = `${this.rows * this.rowH + GAP}px`;
    this.layoutDirty = false;
    for (const [i, cell] of this.cells) this.place(cell, i);
  }

  place(cell, i) {
    const row = Math.floor(i / this.cols);
    const col = i % this.cols;
    cell.style.transform = `translate(${GAP + col * (this.size + GAP)}px, ${GAP + row * this.rowH}px)`;
    cell.style.width = cell.style.height = `${this.size}px`;
  }

  item(i) {
    const page = this.pages.get(Math.floor(i / PAGE));
    return page ? page[i % PAGE] : undefined;
  }

  async load(pageNo) {
    if (this.pages.has(pageNo) || this.loading.has(pageNo)) return;
    this.loading.add(pageNo);
    try {
      const res = await this.fetchPage(pageNo * PAGE, PAGE);
      if (this.destroyed) return;
      if (res.total !== this.total) {
        this.total = res.total;
        this.layoutDirty = true;
      }
      this.pages.set(pageNo, res.items);
      // Keep the names of at most 50 pages (10,000 images): far pages are fetched again if needed.
      if (this.pages.size > 50) {
        const here = Math.floor(this.first / PAGE);
        const far = [...this.pages.keys()].sort((a, b) => Math.abs(b - here) - Math.abs(a - here))[0];
        this.pages.delete(far);
      }
    } finally {
      this.loading.delete(pageNo);
      this.schedule();
    }
  }

  render() {
    if (this.destroyed) return;
    if (this.layoutDirty || !this.cols) this.layout();
    this.empty.hidden = this.total > 0;
    const top = this.el.scrollTop;
    const height = this.el.clientHeight || 400;
    const firstRow = Math.max(0, Math.floor(top / this.rowH) - BUFFER_ROWS);
    const lastRow = Math.min(this.rows - 1, Math.ceil((top + height) / this.rowH) + BUFFER_ROWS);
    this.first = firstRow * this.cols;
    const last = Math.min(this.total - 1, (lastRow + 1) * this.cols - 1);
    for (let p = Math.floor(this.first / PAGE); p <= Math.floor(Math.max(last, 0) / PAGE); p++) {
      if (this.total > 0) this.load(p);
    }
    for (const [i, cell] of this.cells) {
      if (i < this.first || i > last) {
        cell.remove();
        this.cells.delete(i);
      }
    }
    for (let i = this.first; i <= last; i++) {
      const item = this.item(i);
      let cell = this.cells.get(i);
      if (!cell) {
        cell = this.makeCell(i);
        this.cells.set(i, cell);
        this.place(cell, i);
        this.space.append(cell);
      }
      this.fill(cell, i, item);
    }
    this.markActive();
  }

  makeCell(i) {
    const img = h("img", { alt: "", decoding: "async", loading: "lazy", draggable: "false" });
    const cell = h("div", { class: "vcell", role: "option", id: `${this.id}-${i}`, "aria-setsize": this.total,
      "aria-posinset": i + 1 }, img, h("span", { class: "vcheck", "aria-hidden": "true" }, "✓"));
    cell.addEventListener("click", (e) => {
      this.active = i;
      this.toggle(i, e.shiftKey);
      this.el.focus({ preventScroll: true });
    });
    cell.addEventListener("dblclick", () => { const it = this.item(i); if (it && this.onOpen) this.onOpen(it); });
    return cell;
  }

  fill(cell, i, item) {
    const img = cell.firstElementChild;
    cell.setAttribute("aria-setsize", this.total);
    if (!item) {
      if (img.getAttribute("src")) img.removeAttribute("src");
      cell.classList.add("loading");
      cell.setAttribute("aria-label", `image ${i + 1} of ${this.total}, loading`);
      return;
    }
    cell.classList.remove("loading");
    const src = this.thumb(item);
    if (img.getAttribute("src") !== src) img.setAttribute("src", src);
    img.alt = item.name;
    cell.dataset.path = item.path;
    const selected = this.selected.has(item.path);
    cell.setAttribute("aria-selected", selected ? "true" : "false");
    cell.classList.toggle("selected", selected);
    cell.setAttribute("aria-label", `${item.name}, image ${i + 1} of ${this.total}`);
  }

  toggle(i, range = false) {
    const item = this.item(i);
    if (!item) return;
    if (range && this.anchor !== undefined) {
      const [a, b] = [Math.min(this.anchor, i), Math.max(this.anchor, i)];
      for (let k = a; k <= b; k++) { const it = this.item(k); if (it) this.selected.add(it.path); }
    } else if (this.selected.has(item.path)) this.selected.delete(item.path);
    else this.selected.add(item.path);
    this.anchor = i;
    this.onSelect && this.onSelect(this.selected);
    this.render();
  }

  selectLoaded() {
    for (const page of this.pages.values()) for (const it of page) this.selected.add(it.path);
    this.onSelect && this.onSelect(this.selected);
    this.render();
  }

  clearSelection() {
    this.selected.clear();
    this.onSelect && this.onSelect(this.selected);
    this.render();
  }

  markActive() {
    for (const cell of this.cells.values()) cell.classList.remove("active");
    const cell = this.cells.get(this.active);
    if (cell && document.activeElement === this.el) {
      cell.classList.add("active");
      this.el.setAttribute("aria-activedescendant", cell.id);
    } else this.el.removeAttribute("aria-activedescendant");
  }

  key(e) {
    if (!this.total) return;
    const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: this.cols, ArrowUp: -this.cols,
      PageDown: this.cols * 4, PageUp: -this.cols * 4 };
    let next = this.active;
    if (e.key in moves) next += moves[e.key];
    else if (e.key === "Home") next = 0;
    else if (e.key === "End") next = this.total - 1;
    else if (e.key === " ") { e.preventDefault(); this.toggle(this.active, e.shiftKey); return; }
    else if (e.key === "Enter") { const it = this.item(this.active); if (it && this.onOpen) this.onOpen(it); return; }
    else if (e.key === "Delete" || e.key === "Backspace") { if (this.onDelete) this.onDelete(); return; }
    else return;
    e.preventDefault();
    this.active = Math.max(0, Math.min(this.total - 1, next));
    const row = Math.floor(this.active / this.cols);
    const y = row * this.rowH;
    if (y < this.el.scrollTop) this.el.scrollTop = y;
    else if (y + this.rowH > this.el.scrollTop + this.el.clientHeight) this.el.scrollTop = y + this.rowH - this.el.clientHeight + GAP;
    this.render();
  }
}
