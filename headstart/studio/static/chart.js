// A small SVG line chart that grows as points arrive (no library, no canvas).

const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

export class LineChart {
  // series: [{key, label, cls}]; yMax: fixed top (e.g. 1 for accuracy) or null to fit the data.
  constructor({ title, series, yMax = null, format = (v) => v.toFixed(2), xMax = null }) {
    this.series = series;
    this.yMax = yMax;
    this.format = format;
    this.xMax = xMax;
    this.points = [];
    this.w = 480;
    this.h = 200;
    this.pad = { l: 44, r: 12, t: 12, b: 26 };
    this.el = svg("svg", { viewBox: `0 0 ${this.w} ${this.h}`, class: "chart", role: "img", "aria-label": title });
    this.titleEl = svg("title");
    this.titleEl.textContent = title;
    this.el.append(this.titleEl);
    this.grid = svg("g", { class: "chart-grid" });
    this.lines = series.map((s) => svg("polyline", { class: `chart-line ${s.cls}`, fill: "none" }));
    this.el.append(this.grid, ...this.lines);
    // Draw in the element's own pixels, so labels keep their size on a phone and on a wide screen.
    new ResizeObserver(() => {
      const width = Math.round(this.el.getBoundingClientRect().width);
      if (width > 0 && width !== this.w) {
        this.w = width;
        this.h = Math.round(Math.max(150, Math.min(220, width * 0.42)));
        this.el.setAttribute("viewBox", `0 0 ${this.w} ${this.h}`);
        this.draw();
      }
    }).observe(this.el);
    this.draw();
  }

  reset(xMax = null) { this.points = []; this.xMax = xMax; this.draw(); }

  add(point) { this.points.push(point); this.draw(); }

  draw() {
    const { w, h, pad } = this;
    const xs = this.points.map((p) => p.step);
    const xMax = Math.max(this.xMax || 0, ...xs, 1);
    let yMax = this.yMax;
    if (yMax === null) {
      const values = this.points.flatMap((p) => this.series.map((s) => p[s.key])).filter((v) => Number.isFinite(v));
      yMax = values.length ? Math.max(...values) * 1.1 : 1;
    }
    const X = (x) => pad.l + (x / xMax) * (w - pad.l - pad.r);
    const Y = (y) => h - pad.b - (y / yMax) * (h - pad.t - pad.b);
    this.grid.replaceChildren();
    for (let i = 0; i <= 4; i++) {
      const y = (yMax * i) / 4;
      this.grid.append(svg("line", { x1: pad.l, x2: w - pad.r, y1: Y(y), y2: Y(y) }));
      const label = svg("text", { x: pad.l - 6, y: Y(y) + 4, "text-anchor": "end" });
      label.textContent = this.format(y);
      this.grid.append(label);
    }
    const xl = svg("text", { x: w - pad.r, y: h - 6, "text-anchor": "end" });
    xl.textContent = `step ${Math.round(xMax)}`;
    const x0 = svg("text", { x: pad.l, y: h - 6, "text-anchor": "start" });
    x0.textContent = "0";
    this.grid.append(xl, x0);
    this.series.forEach((s, i) => {
      const pts = this.points.filter((p) => Number.isFinite(p[s.key])).map((p) => `${X(p.step).toFixed(1)},${Y(p[s.key]).toFixed(1)}`);
      this.lines[i].setAttribute("points", pts.join(" "));
    });
  }
}
