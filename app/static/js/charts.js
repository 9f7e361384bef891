// Charts: a metric store fed by the API and the event stream, uPlot line charts that keep the user's zoom while
// data streams in, and a small canvas scatter for Pareto fronts. uPlot is loaded as a global (uPlot.iife.min.js).

import { el, fmtNum, setChildren } from "./common.js";

/** Metric series by key, each sorted by step with one value per step. */
export class MetricStore {
  constructor() {
    this.series = new Map();
  }

  /** Replace series with the API's downsampled form ({key, steps, values, ...}). */
  load(list) {
    for (const s of list || []) this.series.set(s.key, { steps: [...s.steps], values: [...s.values] });
  }

  /** Merge [[step, value], ...]: appended when newer than the last step, else inserted or replaced in place. */
  add(key, pairs) {
    let s = this.series.get(key);
    if (!s) {
      s = { steps: [], values: [] };
      this.series.set(key, s);
    }
    for (const [step, value] of pairs) {
      const n = s.steps.length;
      if (!n || step > s.steps[n - 1]) {
        s.steps.push(step);
        s.values.push(value);
        continue;
      }
      let lo = 0;
      let hi = n;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (s.steps[mid] < step) lo = mid + 1;
        else hi = mid;
      }
      if (s.steps[lo] === step) s.values[lo] = value;
      else {
        s.steps.splice(lo, 0, step);
        s.values.splice(lo, 0, value);
      }
    }
  }

  has(key) {
    const s = this.series.get(key);
    return !!(s && s.steps.length);
  }

  get(key) {
    return this.series.get(key);
  }

  keys() {
    return [...this.series.keys()];
  }

  /** uPlot's aligned data for `keys`: [steps (union), values of key 0 (null where missing), ...]. */
  align(keys) {
    return alignSeries(keys.map((key) => this.series.get(key)));
  }
}

/** Align several {steps, values} (or undefined) on the union of their steps. */
export function alignSeries(list) {
  const stepSet = new Set();
  for (const s of list) if (s) for (const step of s.steps) stepSet.add(step);
  const xs = [...stepSet].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const ys = list.map((s) => {
    const out = new Array(xs.length).fill(null);
    if (s) for (let j = 0; j < s.steps.length; j++) out[index.get(s.steps[j])] = s.values[j];
    return out;
  });
  return [xs, ...ys];
}

// Iterations are integers: no ticks at 1.25.
const STEP_INCREMENTS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2500, 5e3, 1e4, 2e4, 25e3, 5e4, 1e5, 2e5, 5e5, 1e6];

/** uPlot's own y ranging, except that a flat series (or one point) gets a window of ±10 % around its value, ±1
 * around 0 (uPlot gives 0…100 for all zeros; a fixed ±1 flattened a hypervolume of 0.05 onto a −1…1 axis). */
function autoRange(_u, min, max) {
  if (min === null || max === null || min === max) {
    const value = min ?? max ?? 0;
    const half = Math.abs(value) * 0.1 || 1;
    return [value - half, value + half];
  }
  return uPlot.rangeNum(min, max, 0.1, true);
}

function axisValues(_u, splits) {
  return splits.map((v) => (v === null ? "" : fmtNum(v, Math.abs(v) < 10 ? 2 : 1)));
}

/**
 * A uPlot line chart over steps. `series`: [{label, color, dash, width, legend (false hides its legend row),
 * fill, value (uPlot's legend formatter (u, v, seriesIdx, idx) → text; default the number)}], `bands`: [{series: [upperIdx, lowerIdx], fill}] with 1-based series indexes as uPlot counts them.
 * The x axis counts iterations (whole-step ticks) unless `xIncrements` is null (uPlot's own ticks, e.g. weights).
 * update(data) keeps the x/y scales the user zoomed to; double-click resets and follows new data again.
 */
export class LineChart {
  constructor(box, { series, bands = [], yRange = null, height = 220, sync = null, xLabel = "iteration", xIncrements = STEP_INCREMENTS } = {}) {
    this.box = box;
    this.height = height;
    this.yRange = yRange;
    this.sync = sync;
    this.xLabel = xLabel;
    this.xIncrements = xIncrements;
    this.zoomed = false;
    this.data = null;
    this.u = null;
    this.noData = el("div", { className: "no-data" }, "waiting for data…");
    this.box.appendChild(this.noData);
    this.setSeries(series, bands);
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(this.box);
  }

  width() {
    return Math.max(this.box.clientWidth || 0, 200);
  }

  /** (Re)build the chart with other series: scales and zoom start over. */
  setSeries(series, bands = []) {
    this.defs = series;
    this.bands = bands;
    if (this.u) {
      this.u.destroy();
      this.u = null;
    }
    this.zoomed = false;
    const data = this.data && this.data.length === series.length + 1 ? this.data : [[], ...series.map(() => [])];
    const opts = {
      width: this.width(),
      height: this.height,
      scales: { x: { time: false }, y: { range: this.yRange || autoRange } },
      series: [
        { label: this.xLabel, value: (_u, v) => (v === null ? "–" : String(v)) },
        ...series.map((d) => ({
          label: d.label,
          stroke: d.color,
          width: d.width ?? 1.6,
          dash: d.dash,
          fill: d.fill,
          spanGaps: true,
          points: d.points ?? { size: 4 },
          value: d.value || ((_u, v) => fmtNum(v)),
        })),
      ],
      bands,
      axes: [
        { stroke: "#667085", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#eef0f3" }, ...(this.xIncrements ? { incrs: this.xIncrements } : {}) },
        { stroke: "#667085", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#eef0f3" }, size: 52, values: axisValues },
      ],
      cursor: { drag: { x: true, y: false }, ...(this.sync ? { sync: { key: this.sync } } : {}) },
      legend: { live: true },
      hooks: {
        // A drag selection is the user zooming (uPlot fires setSelect just before it sets the scale).
        setSelect: [
          (u) => {
            if (u.select.width > 0) this.zoomed = true;
          },
        ],
      },
    };
    this.u = new uPlot(opts, data, this.box);
    this.box.uplot = this.u; // for tests and the console
    this.u.over.addEventListener("dblclick", () => {
      this.zoomed = false;
    });
    const rows = this.u.root.querySelectorAll(".u-legend .u-series");
    series.forEach((d, i) => {
      if (d.legend === false && rows[i + 1]) rows[i + 1].style.display = "none";
    });
    this.box.appendChild(this.noData);
    this.data = data;
    this.showNoData();
  }

  showNoData() {
    const empty = !this.data || !this.data[0].length;
    this.noData.classList.toggle("hidden", !empty);
  }

  /** New data; the zoom is kept unless the user never zoomed (then the scales follow the data). */
  update(data) {
    this.data = data;
    if (!this.u) return;
    this.u.setData(data, !this.zoomed);
    if (!this.zoomed && data[0].length === 1) {
      // One point alone: a narrow window around it instead of uPlot's 0…100 for a point at 0.
      this.u.setScale("x", { min: data[0][0] - 1, max: data[0][0] + 1 });
    }
    this.showNoData();
  }

  resize() {
    if (!this.u) return;
    const width = this.width();
    if (Math.abs(width - this.u.width) < 2) return;
    this.u.setSize({ width, height: this.height });
  }

  points() {
    return this.data ? this.data[0].length : 0;
  }
}

function niceTicks(min, max, count = 5) {
  const span = max - min;
  if (!(span > 0)) return [min];
  let step = Math.pow(10, Math.floor(Math.log10(span / count)));
  const err = (count / span) * step;
  if (err <= 0.15) step *= 10;
  else if (err <= 0.35) step *= 5;
  else if (err <= 0.75) step *= 2;
  const out = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

/**
 * Scatter plot of evaluation layers: update([{label, points: [{x, y, front, tip}], highlight}]). Older layers fade;
 * the highlighted one is drawn on top with its Pareto front joined by a line. Hover shows a point's `tip` text.
 */
export class ScatterChart {
  constructor(box, { height = 300, xLabel = "x", yLabel = "y", color = "#2f6feb" } = {}) {
    this.box = box;
    this.height = height;
    this.xLabel = xLabel;
    this.yLabel = yLabel;
    this.color = color;
    this.layers = [];
    this.wrap = el("div", { className: "scatter-wrap" });
    this.canvas = el("canvas");
    this.tip = el("div", { className: "tooltip hidden" });
    this.noData = el("div", { className: "no-data" }, "no evaluation yet");
    this.wrap.append(this.canvas, this.tip, this.noData);
    box.appendChild(this.wrap);
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => this.tip.classList.add("hidden"));
    new ResizeObserver(() => this.draw()).observe(box);
    box.scatter = this; // for tests and the console
  }

  setLabels(xLabel, yLabel) {
    this.xLabel = xLabel;
    this.yLabel = yLabel;
    this.draw();
  }

  update(layers) {
    this.layers = layers;
    this.draw();
  }

  draw() {
    const width = Math.max(this.box.clientWidth || 0, 200);
    const height = this.height;
    const dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(width * dpr);
    this.canvas.height = Math.round(height * dpr);
    this.canvas.style.height = `${height}px`;
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const all = this.layers.flatMap((l) => l.points).filter((p) => isFinite(p.x) && isFinite(p.y));
    this.noData.classList.toggle("hidden", all.length > 0);
    this.placed = [];
    if (!all.length) return;
    const pad = { left: 56, right: 14, top: 10, bottom: 40 };
    let [x0, x1] = [Math.min(...all.map((p) => p.x)), Math.max(...all.map((p) => p.x))];
    let [y0, y1] = [Math.min(...all.map((p) => p.y)), Math.max(...all.map((p) => p.y))];
    const mx = (x1 - x0 || 1) * 0.08;
    const my = (y1 - y0 || 1) * 0.08;
    [x0, x1, y0, y1] = [x0 - mx, x1 + mx, y0 - my, y1 + my];
    const W = width - pad.left - pad.right;
    const H = height - pad.top - pad.bottom;
    const px = (x) => pad.left + ((x - x0) / (x1 - x0)) * W;
    const py = (y) => pad.top + H - ((y - y0) / (y1 - y0)) * H;

    ctx.font = "11px system-ui, sans-serif";
    ctx.strokeStyle = "#eef0f3";
    ctx.fillStyle = "#667085";
    ctx.lineWidth = 1;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const t of niceTicks(x0, x1)) {
      ctx.beginPath();
      ctx.moveTo(px(t), pad.top);
      ctx.lineTo(px(t), pad.top + H);
      ctx.stroke();
      ctx.fillText(fmtNum(t, 2), px(t), pad.top + H + 4);
    }
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const t of niceTicks(y0, y1)) {
      ctx.beginPath();
      ctx.moveTo(pad.left, py(t));
      ctx.lineTo(pad.left + W, py(t));
      ctx.stroke();
      ctx.fillText(fmtNum(t, 2), pad.left - 6, py(t));
    }
    ctx.strokeStyle = "#c8ced8";
    ctx.strokeRect(pad.left, pad.top, W, H);
    ctx.fillStyle = "#1d232b";
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    ctx.fillText(this.xLabel, pad.left + W / 2, height - 2);
    ctx.save();
    ctx.translate(12, pad.top + H / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textBaseline = "middle";
    ctx.fillText(this.yLabel, 0, 0);
    ctx.restore();

    const ordered = [...this.layers.filter((l) => !l.highlight), ...this.layers.filter((l) => l.highlight)];
    const older = ordered.filter((l) => !l.highlight).length;
    ordered.forEach((layer, i) => {
      const color = layer.color || this.color;
      const strength = layer.highlight ? 1 : 0.15 + (0.45 * (i + 1)) / Math.max(older, 1);
      const front = layer.points.filter((p) => p.front && isFinite(p.x) && isFinite(p.y)).sort((a, b) => a.x - b.x);
      if (front.length > 1) {
        ctx.globalAlpha = strength * (layer.highlight ? 0.9 : 0.5);
        ctx.strokeStyle = layer.highlight ? color : "#98a2b3";
        ctx.lineWidth = layer.highlight ? 2 : 1;
        ctx.beginPath();
        front.forEach((p, j) => (j ? ctx.lineTo(px(p.x), py(p.y)) : ctx.moveTo(px(p.x), py(p.y))));
        ctx.stroke();
      }
      for (const p of layer.points) {
        if (!isFinite(p.x) || !isFinite(p.y)) continue;
        ctx.globalAlpha = strength;
        ctx.fillStyle = layer.highlight ? color : "#98a2b3";
        ctx.beginPath();
        ctx.arc(px(p.x), py(p.y), layer.highlight ? (p.front ? 5 : 3.5) : 3, 0, Math.PI * 2);
        ctx.fill();
        this.placed.push({ x: px(p.x), y: py(p.y), tip: `${layer.label}\n${p.tip || ""}` });
      }
      if (layer.highlight) this.drawLabels(ctx, layer.points, px, py);
    });
    ctx.globalAlpha = 1;
  }

  /** A point's `label` (the weight that made it), beside it: the tooltip alone was not found. */
  drawLabels(ctx, points, px, py) {
    ctx.globalAlpha = 1;
    ctx.fillStyle = "#344054";
    ctx.font = "10px system-ui, sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    this.drawnLabels = points.filter((p) => p.label && isFinite(p.x) && isFinite(p.y)).map((p) => p.label);
    for (const p of points) {
      if (p.label && isFinite(p.x) && isFinite(p.y)) ctx.fillText(p.label, px(p.x) + 6, py(p.y) - 4);
    }
  }

  hover(event) {
    const rect = this.canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const y = event.clientY - rect.top;
    let best = null;
    let bestD = 64;
    for (const p of this.placed || []) {
      const d = (p.x - x) ** 2 + (p.y - y) ** 2;
      if (d <= bestD) {
        best = p;
        bestD = d;
      }
    }
    if (!best) {
      this.tip.classList.add("hidden");
      return;
    }
    setChildren(this.tip, best.tip);
    this.tip.classList.remove("hidden");
    this.tip.style.left = `${Math.min(best.x + 10, rect.width - 180)}px`;
    this.tip.style.top = `${Math.max(best.y - 10, 0)}px`;
  }
}
