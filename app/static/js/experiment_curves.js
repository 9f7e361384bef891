// An experiment's curves averaged over seeds (report.curves, computed in meal_core/experiment.py): per variant a
// line for the mean and a faint band (mean ± sd, or the 95 % t-interval of the mean), one colour per variant and a
// shared legend; hovering shows each variant's mean and n, the seeds that reached the step.
import { alignSeries, LineChart } from "./charts.js";
import { alpha, color, el, fmtNum, setChildren } from "./common.js";
import { METRIC, metricPrefix } from "./contracts.js";

const HYPERVOLUME = "hypervolume";
const BANDS = {
  sd: (p) => (p.sd === null ? [null, null] : [p.mean + p.sd, p.mean - p.sd]),
  ci: (p) => [p.high, p.low],
};

let charts = new Map(); // series name → {chart, box, variants}
let shape = "";

/** The charts, in reading order: hypervolume per evaluation, then rewards and learned weights per objective. */
function chartDefs(curves) {
  const names = new Set(Object.values(curves).flatMap((byName) => Object.keys(byName)));
  const family = (template, title, options) =>
    [...names]
      .filter((n) => n.startsWith(metricPrefix(template)))
      .sort()
      .map((name) => ({ name, title: `${title}: ${name.slice(metricPrefix(template).length)}`, ...options }));
  return [
    ...(names.has(HYPERVOLUME) ? [{ name: HYPERVOLUME, title: "Hypervolume per evaluation", xLabel: "iteration" }] : []),
    ...family(METRIC.REWARD, "Reward per iteration", {}),
    ...family(METRIC.PREF_WEIGHT_LEARNED, "Learned weight per iteration", { yRange: [0, 1] }),
  ];
}

function seriesOf(variants, counts) {
  return variants.flatMap((variant, i) => {
    const c = color(i);
    const faint = { color: alpha(c, 0.3), width: 0.5, legend: false, points: { show: false } };
    const value = (u, v, _s, idx) => (v === null ? "–" : `${fmtNum(v)} (n ${counts[i].get(u.data[0][idx]) ?? 0})`);
    return [
      { label: variant, color: c, width: 2, points: { size: 4 }, value },
      { label: `${variant} upper`, ...faint },
      { label: `${variant} lower`, ...faint },
    ];
  });
}

function build(container, defs, variants) {
  for (const { chart } of charts.values()) chart.u && chart.u.destroy();
  charts = new Map();
  setChildren(container);
  for (const def of defs) {
    const box = el("div", { className: "chart-box" });
    container.append(
      el("section", { className: "card chart-card curve-chart", dataset: { series: def.name } }, el("div", { className: "chart-head" }, el("h2", {}, def.title)), box),
    );
    const counts = variants.map(() => new Map());
    const bands = variants.map((_, i) => ({ series: [2 + 3 * i, 3 + 3 * i], fill: alpha(color(i), 0.12) }));
    const chart = new LineChart(box, { series: seriesOf(variants, counts), bands, yRange: def.yRange || null, height: 220 });
    // The values legend shows over the plot while hovering: on the half away from the cursor.
    chart.u.over.addEventListener("mousemove", (event) => box.classList.toggle("legend-left", event.offsetX > chart.u.over.clientWidth / 2));
    charts.set(def.name, { chart, counts });
  }
}

function renderLegend(legend, variants, curves) {
  setChildren(
    legend,
    ...variants.map((variant, i) => {
      const seeds = Math.max(0, ...Object.values(curves[variant] || {}).flatMap((curve) => curve.map((p) => p.n)));
      return el(
        "span",
        { className: "row", style: { gap: "4px" }, dataset: { variant } },
        el("span", { className: "swatch", style: { background: color(i) } }),
        el("span", {}, variant),
        el("span", { className: "muted small" }, `(${seeds} seed${seeds === 1 ? "" : "s"} with data)`),
      );
    }),
  );
}

/** Draw (or refresh, keeping the user's zoom) the curves of `variants` from `curves` with the chosen band. */
export function renderCurves({ container, legend }, variants, curves, band) {
  const defs = chartDefs(curves);
  const next = JSON.stringify([variants, defs.map((d) => d.name)]);
  if (next !== shape) {
    build(container, defs, variants);
    shape = next;
  }
  renderLegend(legend, variants, curves);
  const toBand = BANDS[band] || BANDS.sd;
  for (const def of defs) {
    const { chart, counts } = charts.get(def.name);
    const list = variants.flatMap((variant, i) => {
      const curve = (curves[variant] || {})[def.name] || [];
      counts[i].clear();
      for (const p of curve) counts[i].set(p.step, p.n);
      const steps = curve.map((p) => p.step);
      const edges = curve.map(toBand);
      return [
        { steps, values: curve.map((p) => p.mean) },
        { steps, values: edges.map((e) => e[0]) },
        { steps, values: edges.map((e) => e[1]) },
      ];
    });
    chart.update(alignSeries(list));
  }
}
