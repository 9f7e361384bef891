// Runs page: the table of runs, refreshed every 2 s without reloading; pick runs to compare.
import { api, el, errorText, every, fmtAgo, fmtNum, fmtTime, progressView, setChildren, statusBadge } from "./common.js";
import { METRIC, metricPrefix } from "./contracts.js";

const REWARD_PREFIX = metricPrefix(METRIC.REWARD);

const body = document.getElementById("runs-body");
const summary = document.getElementById("runs-summary");
const compareButton = document.getElementById("compare-button");
const selectAll = document.getElementById("select-all");
const selected = new Set();
let shownIds = [];

function rewardsCell(run) {
  const entries = Object.entries(run.latest || {})
    .filter(([key]) => key.startsWith(REWARD_PREFIX))
    .sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return el("span", { className: "muted" }, "–");
  return el(
    "div",
    { className: "rewards-cell" },
    entries.map(([key, value]) => el("span", {}, el("b", {}, key.slice(REWARD_PREFIX.length), " "), fmtNum(value))),
  );
}

function row(run) {
  const box = el("input", {
    type: "checkbox",
    checked: selected.has(run.id),
    "aria-label": `select run ${run.id}`,
    onchange: (e) => {
      if (e.target.checked) selected.add(run.id);
      else selected.delete(run.id);
      syncSelection();
    },
  });
  return el(
    "tr",
    { dataset: { runId: String(run.id) } },
    el("td", {}, box),
    el("td", { className: "mono" }, String(run.id)),
    el("td", {}, el("a", { href: `/runs/${run.id}`, className: "run-link" }, run.name)),
    el("td", {}, statusBadge(run.status, { title: run.error || undefined })),
    el("td", {}, progressView(run)),
    el("td", {}, rewardsCell(run)),
    el("td", { className: "num" }, run.queue_position != null ? `#${run.queue_position}` : ""),
    el("td", { title: fmtTime(run.created_at) }, fmtTime(run.created_at), el("div", { className: "muted small" }, fmtAgo(run.created_at))),
    el("td", {}, el("a", { href: `/runs/new?clone=${run.id}`, className: "btn small" }, "Clone")),
  );
}

function syncSelection() {
  for (const id of [...selected]) if (!shownIds.includes(id)) selected.delete(id);
  compareButton.disabled = selected.size < 2;
  compareButton.textContent = selected.size ? `Compare selected (${selected.size})` : "Compare selected";
  selectAll.checked = shownIds.length > 0 && shownIds.every((id) => selected.has(id));
  selectAll.indeterminate = selected.size > 0 && !selectAll.checked;
}

function render(runs) {
  shownIds = runs.map((r) => r.id);
  if (!runs.length) {
    setChildren(body, el("tr", {}, el("td", { colSpan: 9, className: "empty" }, "No runs yet. ", el("a", { href: "/runs/new" }, "Start one"), ".")));
  } else {
    setChildren(body, runs.map(row));
  }
  const counts = {};
  for (const r of runs) counts[r.status] = (counts[r.status] || 0) + 1;
  const parts = Object.entries(counts).map(([status, n]) => `${n} ${status}`);
  summary.textContent = `${runs.length} run${runs.length === 1 ? "" : "s"}${parts.length ? ": " + parts.join(", ") : ""}`;
  syncSelection();
}

async function refresh() {
  try {
    render(await api("/api/runs"));
  } catch (error) {
    summary.textContent = `Could not load runs: ${errorText(error)}`;
  }
}

selectAll.addEventListener("change", () => {
  if (selectAll.checked) shownIds.forEach((id) => selected.add(id));
  else selected.clear();
  for (const box of body.querySelectorAll("input[type=checkbox]")) box.checked = selectAll.checked;
  syncSelection();
});
compareButton.addEventListener("click", () => {
  const ids = shownIds.filter((id) => selected.has(id)).reverse(); // oldest first
  if (ids.length >= 2) window.location.href = `/compare?ids=${ids.join(",")}`;
});

refresh();
every(2000, refresh);
