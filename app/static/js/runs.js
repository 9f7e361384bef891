// Runs page: the table of runs, refreshed every 2 s without reloading; filter it (the filters are the page's URL,
// so a filtered list can be shared and reloaded); pick runs to compare.
import { api, el, errorText, every, fmtAgo, fmtNum, fmtTime, progressView, setChildren, statusBadge } from "./common.js";
import { ALGORITHMS, METRIC, metricPrefix, RUN_STATUS } from "./contracts.js";

const REWARD_PREFIX = metricPrefix(METRIC.REWARD);
// The query parameters of GET /api/runs the filter form sets, each from the field #filter-<name>.
const FILTERS = ["name", "tag", "status", "algorithm", "objective", "experiment", "archived"];
const TYPING_PAUSE_MS = 250;

const body = document.getElementById("runs-body");
const summary = document.getElementById("runs-summary");
const compareButton = document.getElementById("compare-button");
const selectAll = document.getElementById("select-all");
const selected = new Set();
let shownIds = [];
let latestRequest = 0; // a slow answer to an older filter never replaces a newer one
let typingTimer = null;

const field = (name) => document.getElementById(`filter-${name}`);

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
    el("td", {}, labelsCell(run)),
    el("td", {}, statusBadge(run.status, { title: run.error || undefined }), run.archived ? el("span", { className: "badge archived" }, "archived") : null),
    el("td", {}, progressView(run)),
    el("td", {}, rewardsCell(run)),
    el("td", { className: "num" }, run.queue_position != null ? `#${run.queue_position}` : ""),
    el("td", { title: fmtTime(run.created_at) }, fmtTime(run.created_at), el("div", { className: "muted small" }, fmtAgo(run.created_at))),
    el("td", {}, el("a", { href: `/runs/new?clone=${run.id}`, className: "btn small" }, "Clone")),
  );
}

function labelsCell(run) {
  const firstLine = (run.note || "").split("\n")[0];
  return el(
    "div",
    {},
    (run.tags || []).map((tag) => el("button", { type: "button", className: "tag", title: `only runs tagged ${tag}`, onclick: () => filterByTag(tag) }, tag)),
    firstLine ? el("div", { className: "run-note muted small", title: run.note }, firstLine) : null,
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
  const filtered = [...filterParams().keys()].length > 0;
  if (!runs.length && filtered) {
    setChildren(body, el("tr", {}, el("td", { colSpan: 10, className: "empty" }, "No runs match these filters.")));
  } else if (!runs.length) {
    setChildren(body, el("tr", {}, el("td", { colSpan: 10, className: "empty" }, "No runs yet. ", el("a", { href: "/runs/new" }, "Start one"), ".")));
  } else {
    setChildren(body, runs.map(row));
  }
  const counts = {};
  for (const r of runs) counts[r.status] = (counts[r.status] || 0) + 1;
  const parts = Object.entries(counts).map(([status, n]) => `${n} ${status}`);
  const shown = `${runs.length} run${runs.length === 1 ? "" : "s"}${filtered ? " matching the filters" : ""}`;
  summary.textContent = `${shown}${parts.length ? ": " + parts.join(", ") : ""}`;
  syncSelection();
}

async function refresh() {
  const request = ++latestRequest;
  const query = filterParams().toString();
  try {
    const runs = await api(`/api/runs${query ? `?${query}` : ""}`);
    if (request === latestRequest) render(runs);
  } catch (error) {
    if (request === latestRequest) summary.textContent = `Could not load runs: ${errorText(error)}`;
  }
}

// ------------------------------------------------------------------------------------------------------ filters

function filterParams() {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    if (name === "archived") {
      if (field(name).checked) params.set(name, "true");
    } else {
      const value = field(name).value.trim();
      if (value) params.set(name, value);
    }
  }
  return params;
}

function readFiltersFromUrl() {
  const params = new URLSearchParams(window.location.search);
  for (const name of FILTERS) {
    if (name === "archived") field(name).checked = params.get(name) === "true";
    else field(name).value = params.get(name) || "";
  }
}

function filterByTag(tag) {
  field("tag").value = tag;
  filtersChanged();
}

/** The filters changed: into the page's URL (no new history entry per keystroke), then the list. */
function filtersChanged() {
  clearTimeout(typingTimer);
  const query = filterParams().toString();
  window.history.replaceState(null, "", query ? `?${query}` : window.location.pathname);
  refresh();
}

function setupFilters() {
  field("status").append(...Object.values(RUN_STATUS).map((status) => el("option", { value: status }, status)));
  field("algorithm").append(...ALGORITHMS.map((name) => el("option", { value: name }, name)));
  readFiltersFromUrl();
  const form = document.getElementById("run-filters");
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    filtersChanged();
  });
  form.addEventListener("input", (e) => {
    if (e.target.tagName !== "INPUT" || e.target.type === "checkbox") return; // selects and boxes: on change
    clearTimeout(typingTimer);
    typingTimer = setTimeout(filtersChanged, TYPING_PAUSE_MS);
  });
  form.addEventListener("change", (e) => {
    if (e.target.tagName === "SELECT" || e.target.type === "checkbox") filtersChanged();
  });
  form.addEventListener("reset", () => setTimeout(filtersChanged)); // after the form has cleared its fields
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

setupFilters();
refresh();
every(2000, refresh);
