// Compare page: several runs overlaid on the same charts (one colour per run) and a diff of their configs.
import { alignSeries, LineChart } from "./charts.js";
import { api, color, el, ema, errorText, flatten, setChildren, shortJson, statusBadge } from "./common.js";
import { METRIC, metricKey, RUN_STATUSES } from "./contracts.js";

const root = document.getElementById("compare-root");
const ids = (root.dataset.ids || "").split(",").filter(Boolean).map(Number);
const $ = (id) => document.getElementById(id);

let runs = []; // [{run, series: Map(key → {steps, values}), evaluations, color}]
let objectives = [];
let charts = null;
let smoothing = 0;

function label(entry) {
  return `#${entry.run.id} ${entry.run.name}`;
}

async function loadRun(id, index) {
  const run = await api(`/api/runs/${id}`);
  const names = run.objectives;
  const keys = names.flatMap((o) => [METRIC.REWARD, METRIC.PREF_WEIGHT_LEARNED, METRIC.PREF_WEIGHT].map((family) => metricKey(family, o)));
  const width = Math.max(100, Math.round(($("compare-rewards").clientWidth || 1200) / 2));
  const [metrics, evaluations] = await Promise.all([
    api(`/api/runs/${id}/metrics?keys=${encodeURIComponent(keys.join(","))}&max_points=${width}`),
    api(`/api/runs/${id}/evaluations`),
  ]);
  const series = new Map(metrics.series.filter((s) => s.steps.length).map((s) => [s.key, s]));
  return { run, names, series, evaluations, color: color(index) };
}

function chartCard(container, title) {
  const box = el("div", { className: "chart-box" });
  container.append(el("section", { className: "card chart-card" }, el("div", { className: "chart-head" }, el("h2", {}, title)), box));
  return box;
}

function runSeries() {
  return runs.map((entry) => ({ label: label(entry), color: entry.color }));
}

function build() {
  setChildren($("compare-rewards"));
  setChildren($("compare-weights"));
  setChildren($("compare-hypervolume"));
  const sync = "compare";
  charts = {
    rewards: objectives.map((o) => new LineChart(chartCard($("compare-rewards"), `Reward: ${o}`), { series: runSeries(), sync })),
    weights: objectives.map((o) => new LineChart(chartCard($("compare-weights"), `Weight: ${o}`), { series: runSeries(), yRange: [0, 1], sync })),
    hypervolume: new LineChart($("compare-hypervolume"), { series: runSeries(), sync: "compare-eval" }),
  };
}

function weightSeriesOf(entry, o) {
  return entry.series.get(metricKey(METRIC.PREF_WEIGHT_LEARNED, o)) || entry.series.get(metricKey(METRIC.PREF_WEIGHT, o));
}

function render() {
  if (!charts) return;
  const smooth = ([xs, ...ys]) => [xs, ...ys.map((y) => ema(y, smoothing))];
  objectives.forEach((o, k) => {
    charts.rewards[k].update(smooth(alignSeries(runs.map((entry) => entry.series.get(metricKey(METRIC.REWARD, o))))));
    charts.weights[k].update(smooth(alignSeries(runs.map((entry) => weightSeriesOf(entry, o)))));
  });
  charts.hypervolume.update(alignSeries(runs.map((entry) => ({ steps: entry.evaluations.map((e) => e.step), values: entry.evaluations.map((e) => e.hypervolume) }))));
}

function renderLegend() {
  setChildren(
    $("run-legend"),
    runs.map((entry) =>
      el(
        "span",
        { className: "row", style: { gap: "6px" } },
        el("span", { className: "swatch", style: { background: entry.color } }),
        el("a", { href: `/runs/${entry.run.id}` }, label(entry)),
        statusBadge(entry.run.status),
        el("span", { className: "muted small" }, `${entry.run.iteration} / ${entry.run.total_iterations}`),
      ),
    ),
  );
}

function renderDiff() {
  // The config, then the reproducibility record (packages, revision, fingerprints, calibration) under its own prefix.
  const flat = runs.map((entry) => flatten({ ...entry.run.config, reproducibility: entry.run.reproducibility || {} }));
  const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort();
  const hide = $("hide-identical").checked;
  let differing = 0;
  const rows = [];
  for (const key of keys) {
    const values = flat.map((f) => (key in f ? shortJson(f[key]) : "—"));
    const differs = values.some((v) => v !== values[0]);
    if (differs) differing++;
    if (hide && !differs) continue;
    rows.push(
      el(
        "tr",
        { className: differs ? "differs" : "" },
        el("td", {}, key),
        values.map((v) => el("td", {}, v)),
      ),
    );
  }
  setChildren(
    $("config-diff"),
    el(
      "thead",
      {},
      el(
        "tr",
        {},
        el("th", {}, "field"),
        runs.map((entry) => el("th", {}, el("span", { className: "swatch", style: { background: entry.color } }), label(entry))),
      ),
    ),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colSpan: runs.length + 1, className: "empty" }, "The configurations are identical."))),
  );
  $("diff-summary").textContent = `${differing} of ${keys.length} fields differ`;
}

async function load() {
  $("compare-error").textContent = "";
  if (!ids.length) {
    $("run-legend-card").classList.add("hidden");
    return;
  }
  const results = await Promise.allSettled(ids.map((id, i) => loadRun(id, i)));
  const failed = [];
  runs = [];
  results.forEach((r, i) => (r.status === "fulfilled" ? runs.push(r.value) : failed.push(`run ${ids[i]}: ${errorText(r.reason)}`)));
  if (failed.length) $("compare-error").textContent = `Not shown: ${failed.join("; ")}`;
  else if (runs.length < 2) $("compare-error").textContent = "Pick at least two runs to compare.";
  const seen = new Set();
  const names = runs.flatMap((entry) => entry.names).filter((o) => !seen.has(o) && seen.add(o));
  const sameLayout = charts && names.join() === objectives.join() && charts.hypervolume.defs.length === runs.length;
  objectives = names;
  if (!sameLayout) build();
  renderLegend();
  render();
  renderDiff();
}

// While any compared run is still active, reload every few seconds; the charts keep their zoom.
const LIVE_MS = 5000;
let timer = null;
let loading = null;

function refresh() {
  loading ??= load()
    .catch((error) => ($("compare-error").textContent = errorText(error)))
    .finally(() => (loading = null));
  return loading;
}

async function follow() {
  clearTimeout(timer);
  if (!document.hidden) await refresh();
  const live = runs.some((entry) => RUN_STATUSES.ACTIVE.includes(entry.run.status));
  $("live-note").textContent = live ? `updating every ${LIVE_MS / 1000} s while a run is active` : "";
  clearTimeout(timer); // a click may have started another follow() meanwhile
  if (live) timer = setTimeout(follow, LIVE_MS);
}

$("hide-identical").addEventListener("change", renderDiff);
$("refresh-button").addEventListener("click", follow);
$("smoothing").addEventListener("input", (e) => {
  smoothing = Number(e.target.value);
  $("smoothing-value").textContent = smoothing.toFixed(2);
  render();
});
follow();
