// Compare page: several runs overlaid on the same charts (one colour per run) and a diff of their configs.
import { alignSeries, LineChart, ScatterChart } from "./charts.js";
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

// Runs with the same seed and settings give the same curves, which hid each other: each run also has its own dash.
const DASHES = [undefined, [8, 4], [2, 3], [10, 3, 2, 3], [4, 4]];

function runSeries() {
  return runs.map((entry, i) => ({ label: label(entry), color: entry.color, dash: DASHES[i % DASHES.length], points: { size: 6 } }));
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
    steering: objectives.map((o) => new LineChart(chartCard($("compare-steering"), `Steering: ${o}`), { series: runSeries(), yRange: [-1, 1], sync: "compare-eval" })),
  };
  setChildren($("compare-front"));
  charts.front = new ScatterChart($("compare-front"), { height: 340 });
}

/** Each run's latest evaluation: its points on the first two objectives (normalised), the front drawn strong. */
function renderFront() {
  const [xName, yName] = objectives;
  charts.front.setLabels(`${xName} (normalised)`, `${yName} (normalised)`);
  charts.front.update(
    runs
      .filter((entry) => entry.evaluations.length)
      .map((entry) => {
        const e = entry.evaluations[entry.evaluations.length - 1];
        const names = e.objectives || entry.names;
        const [xi, yi] = [names.indexOf(xName), names.indexOf(yName)];
        return {
          label: `${label(entry)}, iteration ${e.step}`,
          highlight: true,
          color: entry.color,
          points:
            xi < 0 || yi < 0
              ? []
              : (e.points || []).map((p) => ({
                  x: p.rewards[xi],
                  y: p.rewards[yi],
                  front: p.on_front,
                  tip: `${label(entry)}\nweights ${(p.weights || []).map((w) => w.toFixed(2)).join(" / ")}${p.on_front ? " (on front)" : ""}`,
                })),
        };
      }),
  );
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
  // How well each run's policy follows the weight asked for (Spearman over the evaluation grid), per evaluation.
  objectives.forEach((o, k) => {
    const grid = (e) => (e.controllability_grid || {})[o] ?? (e.controllability || {})[o] ?? null;
    charts.steering[k].update(alignSeries(runs.map((entry) => ({ steps: entry.evaluations.map((e) => e.step), values: entry.evaluations.map(grid) }))));
  });
  if (objectives.length >= 2) renderFront();
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

/** Every run, to tick the ones to compare (the page also opens empty, from the nav). */
async function renderPicker() {
  const all = await api("/api/runs?archived=true"); // archived runs too: only the runs list hides them
  setChildren(
    $("compare-picker"),
    all.length
      ? all.map((run) =>
          el(
            "label",
            { className: "inline small picker-run" },
            el("input", { type: "checkbox", value: String(run.id), checked: ids.includes(run.id) }),
            ` #${run.id} ${run.name} `,
            statusBadge(run.status),
          ),
        )
      : el("span", { className: "muted small" }, "No runs yet."),
  );
  $("picker-card").open = !ids.length;
}

function compareTicked() {
  const ticked = [...document.querySelectorAll("#compare-picker input:checked")].map((box) => box.value);
  window.location.assign(`/compare?ids=${ticked.join(",")}`);
}

async function load() {
  $("compare-error").textContent = "";
  if (!ids.length) {
    $("run-legend-card").classList.add("hidden");
    $("compare-charts").classList.add("hidden");
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
$("picker-compare").addEventListener("click", compareTicked);
renderPicker().catch((error) => ($("compare-error").textContent = errorText(error)));
$("refresh-button").addEventListener("click", follow);
$("smoothing").addEventListener("input", (e) => {
  smoothing = Number(e.target.value);
  $("smoothing-value").textContent = smoothing.toFixed(2);
  render();
});
follow();
