// An experiment: compute per variant, the variant table with the paired comparison against a chosen baseline,
// the curves averaged over seeds, stability, the runs (linked), and the table as CSV or JSON.
import { api, confirmByName, el, errorText, every, fmtNum, setChildren, statusBadge } from "./common.js";
import { FIGURE, RUN_STATUSES } from "./contracts.js";
import { renderCurves } from "./experiment_curves.js";

const $ = (id) => document.getElementById(id);
const experimentId = $("experiment-root").dataset.experimentId;
let current = null;

function showError(error) {
  $("experiment-error").textContent = errorText(error);
  $("experiment-error").classList.remove("hidden");
}

function interval(low, high) {
  return low === null || high === null ? "–" : `[${fmtNum(low)}, ${fmtNum(high)}]`;
}

function computeNote(body) {
  if (!body.compute_differences.length) {
    return el(
      "span",
      {},
      "Equal budgets: every variant's config commits it to the same responses, the same cap on new tokens and the same policy steps. " +
        "What each run spent (training_tokens, policy_steps, wall_minutes) is in the variant table below.",
    );
  }
  return el(
    "ul",
    {},
    ...body.compute_differences.map((d) =>
      el(
        "li",
        { dataset: { quantity: d.quantity } },
        `${d.quantity} differs: ` +
          Object.entries(d.values)
            .map(([variant, value]) => `${variant} ${value}`)
            .join(", ") +
          (d.ratio === null ? "" : ` (max / min ${fmtNum(d.ratio, 2)})`),
      ),
    ),
  );
}

function variantRows(report) {
  const rows = [];
  for (const [variant, figures] of Object.entries(report.table)) {
    for (const [figure, s] of Object.entries(figures)) {
      const d = (report.comparison[variant] || {})[figure];
      rows.push(
        el(
          "tr",
          { dataset: { variant, figure } },
          el("td", {}, variant),
          el("td", {}, figure),
          el("td", { className: "num" }, String(s.n)),
          el("td", { className: "num" }, `${fmtNum(s.mean)} ± ${fmtNum(s.sd)}`),
          el("td", { className: "num" }, interval(s.low, s.high)),
          el("td", { className: "num" }, d ? fmtNum(d.mean_difference) : variant === report.baseline ? "baseline" : "–"),
          el("td", { className: "num" }, d ? interval(d.low, d.high) : ""),
          el("td", { className: "num" }, d ? fmtNum(d.p) : ""),
        ),
      );
    }
  }
  return rows;
}

// The held-out figures of the report, a column each (with the paired difference beside it), and what they were asked on.
const HELD_OUT = [FIGURE.HELD_OUT_HV, FIGURE.HELD_OUT_CONTROL];

function heldOutNote(heldOut) {
  const samples = heldOut.samples_per_weight ? `${heldOut.samples_per_weight} per prompt and weight` : "each run's eval.samples_per_weight";
  return (
    `Each run once more after its last iteration, on ${heldOut.prompts} (at most ${heldOut.max_prompts} prompts, ${samples} responses): ` +
    "hypervolume of its front and controllability (Spearman of asked weight and obtained reward, mean over objectives). " +
    "Every held_out_* figure is in the variant table below."
  );
}

function heldOutRows(report) {
  return Object.entries(report.table).map(([variant, figures]) => {
    const cells = HELD_OUT.flatMap((figure) => {
      const s = figures[figure];
      const d = (report.comparison[variant] || {})[figure];
      const paired = d ? `${fmtNum(d.mean_difference)} ${interval(d.low, d.high)}` : variant === report.baseline ? "baseline" : "–";
      return [el("td", { className: "num" }, s ? `${fmtNum(s.mean)} ± ${fmtNum(s.sd)}` : "–"), el("td", { className: "num" }, paired)];
    });
    const n = figures[FIGURE.HELD_OUT_HV] ? String(figures[FIGURE.HELD_OUT_HV].n) : "0";
    return el("tr", { dataset: { variant } }, el("td", {}, variant), el("td", { className: "num" }, n), ...cells);
  });
}

// A few of each finished run's own figures beside it in the runs table (all of them: "Export runs CSV").
const RUN_COLUMNS = [FIGURE.HV_FINAL, FIGURE.HELD_OUT_HV, FIGURE.WALL_MINUTES];

function runFigure(report, member, figure) {
  const figures = ((report.runs[member.variant] || {})[String(member.seed)] || {})[figure];
  return figures === undefined ? null : figures;
}

function stabilityRows(report) {
  const rows = [];
  for (const [variant, series] of Object.entries(report.stability)) {
    for (const [name, s] of Object.entries(series)) {
      rows.push(
        el(
          "tr",
          {},
          el("td", {}, variant),
          el("td", {}, name),
          el("td", { className: "num" }, String(s.n)),
          el("td", { className: "num" }, fmtNum(s.final_sd)),
          el("td", { className: "num" }, fmtNum(s.band)),
          el("td", { className: "num" }, fmtNum(s.jumpiness)),
        ),
      );
    }
  }
  return rows;
}

function csvCell(value) {
  const text = value === null || value === undefined ? "" : String(value);
  return /[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

function csvText(lines) {
  return lines.map((line) => line.map(csvCell).join(",")).join("\n") + "\n";
}

// Each finished run's own figures: one row per run, one column per figure of the report.
function runsCsv(report) {
  const lines = [["variant", "seed", ...report.figures]];
  for (const [variant, bySeed] of Object.entries(report.runs)) {
    for (const [seed, figures] of Object.entries(bySeed)) lines.push([variant, seed, ...report.figures.map((f) => figures[f])]);
  }
  return csvText(lines);
}

function tableCsv(report) {
  const lines = [["variant", "figure", "n", "mean", "sd", "low", "high", "diff_n", "diff", "diff_low", "diff_high", "p"]];
  for (const [variant, figures] of Object.entries(report.table)) {
    for (const [figure, s] of Object.entries(figures)) {
      const d = (report.comparison[variant] || {})[figure] || {};
      lines.push([variant, figure, s.n, s.mean, s.sd, s.low, s.high, d.n, d.mean_difference, d.low, d.high, d.p]);
    }
  }
  return csvText(lines);
}

function download(text, name) {
  const link = el("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })), download: name });
  link.click();
  URL.revokeObjectURL(link.href);
}

async function load(baseline) {
  const query = baseline ? `?baseline=${encodeURIComponent(baseline)}` : "";
  const body = await api(`/api/experiments/${experimentId}${query}`);
  current = body;
  $("experiment-name").textContent = `${body.name}: ${body.finished} of ${body.runs} runs finished`;
  const variants = Object.keys(body.compute);
  const chosen = body.report.baseline;
  setChildren($("baseline"), ...variants.map((v) => el("option", { value: v, selected: v === chosen }, v)));
  $("export-json").href = `/api/experiments/${experimentId}?baseline=${encodeURIComponent(chosen)}`;
  setChildren($("compute-note"), computeNote(body));
  setChildren($("variant-body"), ...variantRows(body.report));
  drawCurves();
  const heldOut = body.config.held_out;
  $("held-out-section").classList.toggle("hidden", !heldOut);
  if (heldOut) {
    $("held-out-note").textContent = heldOutNote(heldOut);
    setChildren($("held-out-body"), ...heldOutRows(body.report));
  }
  setChildren($("stability-body"), ...stabilityRows(body.report));
  setChildren(
    $("member-body"),
    ...body.members.map((m) =>
      el(
        "tr",
        { dataset: { runId: String(m.id) } },
        el("td", {}, el("a", { href: `/runs/${m.id}` }, m.name)),
        el("td", {}, m.variant || "–"),
        el("td", { className: "num" }, m.seed === null ? "–" : String(m.seed)),
        el("td", {}, statusBadge(m.status)),
        ...RUN_COLUMNS.map((figure) => el("td", { className: "num" }, fmtNum(runFigure(body.report, m, figure)))),
        el("td", {}, RUN_STATUSES.RESUMABLE.includes(m.status) ? el("button", { type: "button", className: "btn", onclick: () => resume(m.id) }, "Resume") : ""),
      ),
    ),
  );
}

function drawCurves() {
  if (!current) return;
  // The planned variants in launch order (colours stay put as runs finish); those with curves if none is planned.
  const variants = Object.keys(current.compute).length ? Object.keys(current.compute) : Object.keys(current.report.curves);
  renderCurves({ container: $("curve-charts"), legend: $("curve-legend") }, variants, current.report.curves, $("curve-band").value);
}

async function resume(runId) {
  try {
    await api(`/api/runs/${runId}/resume`, { method: "POST" });
    await load($("baseline").value);
  } catch (error) {
    showError(error);
  }
}

// Live while runs train (their held-out evaluation included): the table refills as they finish. A failed or
// stopped run is not waited for; resuming it reloads the page's data, and polling goes on.
every(10000, async () => {
  if (current && current.members.some((m) => RUN_STATUSES.ACTIVE.includes(m.status))) await load($("baseline").value);
});

$("baseline").addEventListener("change", () => load($("baseline").value).catch(showError));
$("curve-band").addEventListener("change", drawCurves);
$("export-csv").addEventListener("click", () => {
  if (current) download(tableCsv(current.report), `experiment-${experimentId}.csv`);
});
$("export-runs-csv").addEventListener("click", () => {
  if (current) download(runsCsv(current.report), `experiment-${experimentId}-runs.csv`);
});
// Delete: confirmed by typing the experiment's name; the server refuses it whole while a run is unfinished.
confirmByName(
  () => (current ? current.name : null),
  async () => {
    await api(`/api/experiments/${experimentId}`, { method: "DELETE" });
    window.location.assign("/experiments");
  },
  showError,
);
load(null).catch(showError);
