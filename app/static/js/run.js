// Run page: header with status and actions, live charts (uPlot) fed by the event stream, evaluations, samples.
// Charts are updated in place with setData: no page reload, and a zoomed chart keeps its zoom.
import { LineChart, MetricStore, ScatterChart } from "./charts.js";
import { alpha, api, color, el, ema, errorText, fmtAgo, fmtNum, fmtTime, progressView, setChildren } from "./common.js";
import { showHeldOut } from "./held_out.js";
import { setupExport } from "./run_export.js";
import { renderManage, setupManage } from "./run_manage.js";
import { steeringData, steeringSeries } from "./steering.js";
import { METRIC, metricKey, metricPrefix, RUN_STATUS, RUN_STATUSES } from "./contracts.js";

const root = document.getElementById("run-root");
const runId = root.dataset.runId;
const $ = (id) => document.getElementById(id);

const store = new MetricStore();
let run = null;
let objectives = [];
let evaluations = [];
let smoothing = 0;
const charts = {};
let renderTimer = null;
let maxPoints = 600;
let compacting = false;

// ---------------------------------------------------------------------------------------------- header, actions

function renderHeader() {
  const status = $("run-status");
  status.textContent = run.status;
  status.className = `badge status-${run.status}`;
  $("run-name").textContent = run.name;
  document.title = `${run.name} (${run.status}) · Meal Studio`;
  setChildren($("run-progress"), progressView(run));
  const meta = [
    ["created", `${fmtTime(run.created_at)} (${fmtAgo(run.created_at)})`],
    ["by", run.created_by],
    ["started", fmtTime(run.started_at)],
    ["finished", fmtTime(run.finished_at)],
    ["worker", run.worker],
    ["attempts", run.attempts ? String(run.attempts) : ""],
    ["queue position", run.queue_position != null && run.status === RUN_STATUS.QUEUED ? `#${run.queue_position}` : ""],
    ["last heartbeat", RUN_STATUSES.HELD.includes(run.status) ? fmtAgo(run.heartbeat_at) : ""],
  ].filter(([, v]) => v);
  setChildren(
    $("run-meta"),
    meta.map(([k, v]) => el("span", {}, `${k} `, el("b", {}, v))),
  );
  const failed = !!run.error;
  $("run-error").classList.toggle("hidden", !failed);
  $("run-error-text").textContent = run.error || "";
  $("run-traceback").textContent = run.traceback || "";
  $("run-traceback-box").classList.toggle("hidden", !run.traceback);
  $("run-status-note").textContent = statusNote(run);
  if (RUN_STATUSES.FINISHED.includes(run.status)) showLive(`${run.status}: no more updates`, "var(--muted)");
  $("stop-button").disabled = !RUN_STATUSES.STOPPABLE.includes(run.status);
  $("resume-button").disabled = !RUN_STATUSES.RESUMABLE.includes(run.status);
  renderManage(run);
}

/** What the status alone does not say: why a run is still busy after a stop, or why it succeeded despite one. */
function statusNote(r) {
  if (r.status === RUN_STATUS.STOPPING) {
    return `Stop asked by ${r.stopped_by || "someone"}: the run finishes the iteration it is in and saves a checkpoint first.`;
  }
  if (r.status === RUN_STATUS.SUCCEEDED && r.stopped_by) {
    return `Stop asked by ${r.stopped_by} during its last iteration: it finished that iteration (and its final evaluation), so it succeeded.`;
  }
  return "";
}

function showLive(text, colour) {
  const state = $("live-state");
  state.textContent = text;
  state.style.color = colour;
}

async function action(name) {
  const box = $("action-error");
  box.classList.add("hidden");
  $(`${name}-button`).disabled = true;
  try {
    Object.assign(run, await api(`/api/runs/${runId}/${name}`, { method: "POST" }));
  } catch (error) {
    box.textContent = `Could not ${name} the run: ${errorText(error)}`;
    box.classList.remove("hidden");
  }
  renderHeader();
}

function renderReproducibility() {
  const record = run.reproducibility;
  $("run-reproducibility").textContent = record && record !== "loading" ? JSON.stringify(record, null, 2) : "not written yet: the run has not calibrated";
}

// ---------------------------------------------------------------------------------------------------- charts

function rewardKeys() {
  const scale = document.querySelector("input[name=reward-scale]:checked").value;
  const set = document.querySelector("input[name=reward-set]:checked").value;
  const all = metricPrefix(scale === "raw" ? METRIC.REWARD : METRIC.REWARD_NORM);
  const accepted = metricPrefix(scale === "raw" ? METRIC.REWARD_ACCEPTED : METRIC.REWARD_NORM_ACCEPTED);
  const out = [];
  if (set !== "accepted") out.push({ prefix: all, label: "all", dash: undefined });
  if (set !== "all") out.push({ prefix: accepted, label: "accepted", dash: set === "both" ? [5, 4] : undefined });
  return out;
}

function rewardSeries(k) {
  return rewardKeys().map((r) => ({ label: `${objectives[k]} (${r.label})`, color: color(k), dash: r.dash, key: r.prefix + objectives[k] }));
}

function buildCharts() {
  const sync = `run-${runId}`;
  const weightSeries = [];
  const bands = [];
  objectives.forEach((name, k) => {
    const c = color(k);
    const base = 1 + weightSeries.length;
    weightSeries.push(
      { label: name, color: c, width: 2 },
      { label: `${name} +std`, color: alpha(c, 0.25), width: 0.5, legend: false, points: { show: false } },
      { label: `${name} −std`, color: alpha(c, 0.25), width: 0.5, legend: false, points: { show: false } },
      { label: `${name} (net)`, color: c, dash: [6, 4], width: 1.4, points: { show: false } },
    );
    bands.push({ series: [base + 1, base + 2], fill: alpha(c, 0.13) });
  });
  charts.weights = new LineChart($("chart-weights"), { series: weightSeries, bands, yRange: [0, 1], height: 260, sync });

  const rewardsBox = $("chart-rewards");
  charts.rewards = objectives.map((name, k) => {
    const box = el("div", { className: "chart-box" });
    rewardsBox.append(el("div", {}, el("h3", {}, name), box));
    return new LineChart(box, { series: rewardSeries(k), height: 180, sync });
  });
  charts.losses = new LineChart($("chart-losses"), {
    series: [
      { label: "policy", color: color(0), key: METRIC.LOSS_POLICY },
      { label: "meta", color: color(1), key: METRIC.LOSS_META },
      { label: "weights", color: color(2), key: METRIC.LOSS_WEIGHTS },
    ],
    sync,
  });
  charts.accept = new LineChart($("chart-accept"), {
    series: [
      { label: "accept rate", color: color(2), key: METRIC.ACCEPT_RATE },
      { label: "degenerate rate", color: color(1), key: "degenerate_rate" },
    ],
    yRange: [0, 1],
    sync,
  });
  charts.throughput = new LineChart($("chart-throughput"), {
    series: [{ label: "tokens/s", color: color(4), key: METRIC.TOKENS_PER_S }],
    sync,
  });
  charts.hypervolume = new LineChart($("chart-hypervolume"), {
    series: [{ label: "hypervolume", color: color(5) }],
    sync,
  });
  charts.any = new LineChart($("chart-any"), { series: [anySeries("")], sync });
  $("metric-picker").addEventListener("change", () => {
    charts.any.setSeries([anySeries($("metric-picker").value)]);
    render();
  });
  charts.front = new ScatterChart($("chart-front"), { height: 320 });
  const steeringBox = $("chart-steering");
  charts.steering = objectives.map((name) => {
    const box = el("div", { className: "chart-box" });
    steeringBox.append(el("div", {}, el("h3", {}, name), box));
    return new LineChart(box, { series: [], height: 200, xLabel: `asked weight`, xIncrements: null });
  });
  for (const input of document.querySelectorAll("input[name=reward-scale], input[name=reward-set]")) {
    input.addEventListener("change", () => {
      charts.rewards.forEach((chart, k) => chart.setSeries(rewardSeries(k)));
      render();
    });
  }
  buildFrontAxes();
}

function anySeries(key) {
  return { label: key || "–", color: color(6), key };
}

/** The picker lists every key recorded so far; it starts on the first step timing, if any. */
function renderMetricPicker() {
  const picker = $("metric-picker");
  const keys = store.keys().sort();
  if (picker.options.length === keys.length) return;
  const chosen = picker.value || keys.find((key) => key.startsWith(METRIC.TIME_PREFIX)) || keys[0];
  setChildren(
    picker,
    keys.map((key) => el("option", { value: key }, key)),
  );
  picker.value = chosen;
  if (charts.any.defs[0].key !== chosen) charts.any.setSeries([anySeries(chosen)]);
}

/** Data of a chart whose series each name a metric key, smoothed. */
function keyedData(chart) {
  const [xs, ...ys] = store.align(chart.defs.map((d) => d.key));
  return [xs, ...ys.map((y) => ema(y, smoothing))];
}

function weightData() {
  const keys = [];
  for (const name of objectives) {
    const learned = metricKey(METRIC.PREF_WEIGHT_LEARNED, name);
    keys.push(store.has(learned) ? learned : metricKey(METRIC.PREF_WEIGHT, name), metricKey(METRIC.PREF_WEIGHT_STD, name), metricKey(METRIC.PREF_WEIGHT_NET, name));
  }
  const [xs, ...ys] = store.align(keys);
  const out = [xs];
  for (let k = 0; k < objectives.length; k++) {
    const mean = ema(ys[3 * k], smoothing);
    const std = ema(ys[3 * k + 1], smoothing);
    const upper = mean.map((m, i) => (m === null || std[i] === null ? null : m + std[i]));
    const lower = mean.map((m, i) => (m === null || std[i] === null ? null : m - std[i]));
    out.push(mean, upper, lower, ema(ys[3 * k + 2], smoothing));
  }
  return out;
}

function render() {
  renderTimer = null;
  if (!charts.weights) return;
  const weights = weightData();
  charts.weights.update(weights);
  $("chart-weights").dataset.points = String(weights[0].length);
  for (const chart of charts.rewards) chart.update(keyedData(chart));
  renderMetricPicker();
  for (const chart of [charts.losses, charts.accept, charts.throughput, charts.any]) chart.update(keyedData(chart));
  charts.hypervolume.update([evaluations.map((e) => e.step), evaluations.map((e) => e.hypervolume)]);
  renderEvaluations();
  renderSteering();
}

function renderSteering() {
  charts.steering.forEach((chart, k) => {
    if (chart.defs.length !== evaluations.length) chart.setSeries(steeringSeries(evaluations, color(k)));
    chart.update(steeringData(evaluations, k));
  });
  $("chart-steering").dataset.evaluations = String(evaluations.length);
}

function scheduleRender() {
  if (renderTimer === null) renderTimer = setTimeout(render, 150);
}

/** Live points pile up beyond the chart's resolution: swap them for a fresh downsampled copy now and then. */
async function maybeCompact() {
  if (compacting) return;
  const longest = Math.max(0, ...store.keys().map((key) => store.get(key).steps.length));
  if (longest <= 4 * maxPoints) return;
  compacting = true;
  try {
    const metrics = await api(`/api/runs/${runId}/metrics?max_points=${maxPoints}`);
    const fresh = new MetricStore();
    fresh.load(metrics.series);
    // Points that arrived during the request are newer than the server's copy: keep them.
    for (const key of store.keys()) {
      const mine = store.get(key);
      const theirs = fresh.get(key);
      const last = theirs && theirs.steps.length ? theirs.steps[theirs.steps.length - 1] : -Infinity;
      const newer = [];
      mine.steps.forEach((s, i) => s > last && newer.push([s, mine.values[i]]));
      fresh.add(key, newer);
    }
    store.series = fresh.series;
    scheduleRender();
  } finally {
    compacting = false;
  }
}

// ------------------------------------------------------------------------------------------------ evaluations

const frontAxes = [0, 1];

function buildFrontAxes() {
  const box = $("front-axes");
  if (objectives.length <= 2) {
    charts.front.setLabels(`${objectives[0] || "objective 0"} (normalised)`, `${objectives[1] || "objective 1"} (normalised)`);
    return;
  }
  const make = (axis) => {
    const select = el(
      "select",
      { "aria-label": `${axis ? "y" : "x"} objective` },
      objectives.map((o, k) => el("option", { value: String(k), selected: k === frontAxes[axis] }, o)),
    );
    select.addEventListener("change", () => {
      frontAxes[axis] = Number(select.value);
      renderEvaluations();
    });
    return select;
  };
  setChildren(box, el("label", { className: "inline" }, "x ", make(0)), el("label", { className: "inline" }, "y ", make(1)));
}

function renderEvaluations() {
  if (objectives.length < 2) return;
  const [xi, yi] = frontAxes;
  charts.front.setLabels(`${objectives[xi]} (normalised)`, `${objectives[yi]} (normalised)`);
  const latest = evaluations.length - 1;
  charts.front.update(
    evaluations.map((e, i) => ({
      label: `iteration ${e.step}${i === latest ? " (latest)" : ""}`,
      highlight: i === latest,
      color: color(0),
      points: (e.points || []).map((p) => ({
        x: p.rewards[xi],
        y: p.rewards[yi],
        front: p.on_front,
        label: i === latest && p.on_front ? (p.weights || []).map((w) => w.toFixed(2)).join("/") : null,
        tip: [
          `weights ${(p.weights || []).map((w) => w.toFixed(2)).join(" / ")}${p.on_front ? "  (on front)" : ""}`,
          ...(e.objectives || objectives).map((o, k) => `${o}: ${fmtNum(p.rewards[k])}  raw ${fmtNum((p.raw_rewards || [])[k])}`),
        ].join("\n"),
      })),
    })),
  );
  const box = $("eval-tables");
  if (!evaluations.length) {
    setChildren(box, el("span", { className: "muted small" }, "Evaluations appear here as the run reaches them (eval.every)."));
    return;
  }
  const e = evaluations[latest];
  const names = e.objectives || objectives;
  const table = el(
    "table",
    { className: "data", style: { width: "auto" }, id: "eval-table" },
    el(
      "thead",
      {},
      el(
        "tr",
        {},
        el("th", {}, "objective"),
        el("th", { title: "Spearman over every response of the asked weight and the obtained reward" }, "controllability ρ per response"),
        el("th", { title: "Spearman over the grid of the asked weight and the mean reward there" }, "over the grid"),
        el("th", { title: "95th percentile of |ρ| with the asked weights shuffled: what a weight-blind policy reaches by chance" }, "null (p95)"),
        el("th", {}, "probe"),
      ),
    ),
    el(
      "tbody",
      {},
      names.map((o) =>
        el(
          "tr",
          {},
          el("td", {}, o),
          el("td", { className: "num" }, fmtNum(e.controllability?.[o])),
          el("td", { className: "num" }, fmtNum(e.controllability_grid?.[o])),
          el("td", { className: "num" }, fmtNum(e.controllability_null?.[o])),
          el("td", { className: "num" }, fmtNum(e.probe?.[o])),
        ),
      ),
    ),
  );
  const auto = e.auto_weights || {};
  const extraProbe = Object.keys(e.probe || {}).filter((k) => !names.includes(k));
  setChildren(
    box,
    el("div", {}, el("h3", {}, `Latest evaluation: iteration ${e.step}`), table),
    el(
      "div",
      { className: "small" },
      el("div", {}, "hypervolume ", el("b", { className: "mono" }, fmtNum(e.hypervolume, 4))),
      el("div", { className: "muted" }, `reference point ${(e.reference_point || []).map((v) => fmtNum(v, 2)).join(", ")}`),
      el(
        "div",
        { className: "muted" },
        `${evaluations.length} evaluation${evaluations.length === 1 ? "" : "s"}; ${(e.points || []).filter((p) => p.on_front).length} of ${(e.points || []).length} weights on the front`,
      ),
      e.responses ? el("div", { className: "muted" }, `${e.responses} responses, ${fmtNum(100 * (e.degenerate_share || 0), 1)} % degenerate`) : null,
      "kl_net" in auto
        ? el(
            "div",
            { className: "muted", title: "KL from the trade-off each held-out prompt's responses achieve: lower fits better" },
            `auto weights: KL ${fmtNum(auto.kl_net, 4)} (net) vs ${fmtNum(auto.kl_uniform, 4)} (uniform)`,
          )
        : null,
      extraProbe.map((k) => el("div", { className: "muted" }, `probe ${k}: ${fmtNum(e.probe[k])}`)),
    ),
  );
}

function addEvaluations(list) {
  const byStep = new Map(evaluations.map((e) => [e.step, e]));
  for (const e of list) byStep.set(e.step, e);
  evaluations = [...byStep.values()].sort((a, b) => a.step - b.step);
}

// ---------------------------------------------------------------------------------------------------- samples

let sampleSteps = [];
let sampleRequest = 0;

function renderSampleSlider() {
  const slider = $("sample-step");
  slider.disabled = sampleSteps.length === 0;
  slider.max = String(Math.max(sampleSteps.length - 1, 0));
}

function sampleHead() {
  setChildren(
    $("samples-head"),
    el(
      "tr",
      {},
      el("th", {}, "#"),
      el("th", {}, "prompt"),
      el("th", {}, "weights"),
      el("th", {}, "response"),
      objectives.map((o) => el("th", { title: "raw score (normalised)" }, o)),
      el("th", {}, "accepted"),
    ),
  );
}

async function showSamples(index) {
  const step = sampleSteps[index];
  if (step === undefined) return;
  $("sample-step").value = String(index);
  $("sample-step-label").textContent = `${step}  (${index + 1} of ${sampleSteps.length})`;
  const request = ++sampleRequest;
  const acceptedOnly = $("sample-accepted-only").checked;
  let samples;
  try {
    samples = await api(`/api/runs/${runId}/samples?step=${step}&limit=1000${acceptedOnly ? "&accepted=true" : ""}`);
  } catch (error) {
    setChildren($("samples-body"), el("tr", {}, el("td", { colSpan: 5 + objectives.length, className: "empty" }, errorText(error))));
    return;
  }
  if (request !== sampleRequest) return; // a newer choice won
  let previousPrompt = null;
  const rows = samples.map((s) => {
    const samePrompt = s.prompt_id === previousPrompt;
    previousPrompt = s.prompt_id;
    return el(
      "tr",
      { className: s.accepted ? "accepted" : "" },
      el("td", { className: "mono small" }, String(s.position)),
      el("td", { className: "text" }, samePrompt ? el("span", { className: "muted small", title: s.prompt }, "same prompt") : el("div", {}, s.prompt)),
      el("td", { className: "mono small" }, (s.weights || []).map((w, k) => `${objectives[k] ?? k} ${Number(w).toFixed(2)}`).join("\n")),
      el("td", { className: "text" }, el("div", {}, s.response)),
      objectives.map((o) => el("td", { className: "num mono small" }, fmtNum(s.raw_rewards?.[o]), el("div", { className: "muted" }, `(${fmtNum(s.normalized_rewards?.[o], 2)})`))),
      el("td", {}, s.accepted ? el("span", { className: "yes" }, "✓ yes") : el("span", { className: "no" }, "no")),
    );
  });
  sampleRows = rows;
  showSamplePage(0);
}

// The samples of one iteration, a page at a time: all of them made the page ~9,000 px tall.
const SAMPLES_PER_PAGE = 12;
let sampleRows = [];

function showSamplePage(page) {
  const pages = Math.max(1, Math.ceil(sampleRows.length / SAMPLES_PER_PAGE));
  const current = Math.min(Math.max(0, page), pages - 1);
  const shown = sampleRows.slice(current * SAMPLES_PER_PAGE, (current + 1) * SAMPLES_PER_PAGE);
  const empty = el("tr", {}, el("td", { colSpan: 5 + objectives.length, className: "empty" }, "No samples at this iteration."));
  setChildren($("samples-body"), shown.length ? shown : empty);
  const first = current * SAMPLES_PER_PAGE + 1;
  setChildren(
    $("samples-pager"),
    sampleRows.length > SAMPLES_PER_PAGE
      ? [
          el("button", { type: "button", className: "btn small", disabled: current === 0, onclick: () => showSamplePage(current - 1) }, "← Previous"),
          el("span", { className: "muted small" }, ` samples ${first}–${first + shown.length - 1} of ${sampleRows.length} `),
          el("button", { type: "button", className: "btn small", disabled: current === pages - 1, onclick: () => showSamplePage(current + 1) }, "Next →"),
        ]
      : [],
  );
}

function addSampleSteps(steps) {
  const set = new Set(sampleSteps);
  let added = false;
  for (const s of steps) {
    if (!set.has(s)) {
      set.add(s);
      added = true;
    }
  }
  if (!added) return;
  const wasLast = Number($("sample-step").value) >= sampleSteps.length - 1;
  sampleSteps = [...set].sort((a, b) => a - b);
  renderSampleSlider();
  if ($("sample-follow").checked || (wasLast && sampleSteps.length === 1)) showSamples(sampleSteps.length - 1);
  else $("sample-step-label").textContent = `${sampleSteps[Number($("sample-step").value)]}  (${Number($("sample-step").value) + 1} of ${sampleSteps.length})`;
}

// ------------------------------------------------------------------------------------------------------ events

function connect(cursor) {
  const finished = () => RUN_STATUSES.FINISHED.includes(run.status);
  const source = new EventSource(`/api/runs/${runId}/events?cursor=${encodeURIComponent(cursor || "")}`);
  // A finished run can still be resumed, so the page keeps listening; it just does not claim to be live.
  source.onopen = () => (finished() ? showLive(`${run.status}: no more updates`, "var(--muted)") : showLive("● live", "var(--ok)"));
  source.onerror = () => showLive("reconnecting…", "var(--warn)");
  source.addEventListener("status", (e) => {
    Object.assign(run, JSON.parse(e.data));
    renderHeader();
    if (run.status === RUN_STATUS.SUCCEEDED) showHeldOut(runId); // stored before the run succeeds
    // The record is written once the run has calibrated; status events leave it out, so fetch it then, once.
    if (!run.reproducibility && run.iteration > 0) {
      run.reproducibility = "loading";
      api(`/api/runs/${runId}`)
        .then((full) => (run.reproducibility = full.reproducibility))
        .catch(() => (run.reproducibility = null))
        .finally(renderReproducibility);
    }
  });
  source.addEventListener("metrics", (e) => {
    const points = JSON.parse(e.data);
    for (const [key, pairs] of Object.entries(points)) store.add(key, pairs);
    scheduleRender();
    maybeCompact();
  });
  source.addEventListener("samples", (e) => {
    addSampleSteps(JSON.parse(e.data).map((s) => s.step));
  });
  source.addEventListener("evaluations", (e) => {
    addEvaluations(JSON.parse(e.data));
    scheduleRender();
  });
  source.addEventListener("gone", () => {
    source.close();
    showLive("run deleted", "var(--muted)");
  });
  return source;
}

// -------------------------------------------------------------------------------------------------------- main

async function main() {
  run = await api(`/api/runs/${runId}`);
  objectives = run.objectives;
  renderHeader();
  $("run-config").textContent = JSON.stringify(run.config, null, 2);
  renderReproducibility();
  $("stop-button").addEventListener("click", () => action("stop"));
  $("resume-button").addEventListener("click", () => action("resume"));
  setupManage(run, (changed) => {
    Object.assign(run, changed);
    renderHeader();
  });
  setupExport(runId, objectives).catch((error) => {
    $("export-error").textContent = `Could not list the exports: ${errorText(error)}`;
    $("export-error").classList.remove("hidden");
  });
  buildCharts();
  sampleHead();
  maxPoints = Math.max(100, Math.round($("chart-weights").clientWidth || 600));
  const [metrics, evals, steps] = await Promise.all([
    api(`/api/runs/${runId}/metrics?max_points=${maxPoints}`),
    api(`/api/runs/${runId}/evaluations`),
    api(`/api/runs/${runId}/sample-steps`),
  ]);
  store.load(metrics.series);
  addEvaluations(evals);
  render();
  showHeldOut(runId); // a run without one shows nothing more
  sampleSteps = steps;
  renderSampleSlider();
  if (sampleSteps.length) showSamples(sampleSteps.length - 1);
  connect(run.event_cursor);

  const smooth = $("smoothing");
  smooth.addEventListener("input", () => {
    smoothing = Number(smooth.value);
    $("smoothing-value").textContent = smoothing.toFixed(2);
    scheduleRender();
  });
  $("sample-step").addEventListener("input", (e) => {
    const index = Number(e.target.value);
    $("sample-follow").checked = index === sampleSteps.length - 1;
    showSamples(index);
  });
  $("sample-accepted-only").addEventListener("change", () => showSamples(Number($("sample-step").value)));
  $("sample-follow").addEventListener("change", (e) => {
    if (e.target.checked && sampleSteps.length) showSamples(sampleSteps.length - 1);
  });
}

main().catch((error) => {
  const box = $("action-error");
  box.textContent = `Could not load the run: ${errorText(error)}`;
  box.classList.remove("hidden");
});
