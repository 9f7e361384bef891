// The run page's Export card: a worker runs `meal export` on the run's checkpoint, merged at the chosen weights
// (or the adapters alone, to choose later), and zips it into the artefact store; the list offers each zip.
import { api, el, errorText, fmtTime, setChildren } from "./common.js";
import { JOB_STATUS, PENDING_JOB_STATUSES } from "./contracts.js";
import { WeightRow } from "./weights.js";

const POLL_MS = 1500;
const $ = (id) => document.getElementById(id);

function fmtSize(bytes) {
  if (bytes == null) return "";
  const units = ["B", "kB", "MB", "GB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function describe(exported, objectives) {
  if (exported.adapters) return "adapters (weight chosen at load time)";
  return `merged at ${objectives.map((name, k) => `${name} ${exported.weights[k].toFixed(2)}`).join(", ")}`;
}

function exportRow(exported, objectives) {
  let outcome = exported.status;
  if (exported.status === JOB_STATUS.SUCCEEDED) {
    const link = el("a", { href: `/api/exports/${exported.id}/download`, download: exported.artifact }, "Download");
    outcome = el("span", {}, link, ` ${fmtSize(exported.size_bytes)}`);
  } else if (exported.status === JOB_STATUS.FAILED) {
    outcome = el("span", { className: "error-msg" }, `failed: ${exported.error || "no reason given"}`);
  }
  return el(
    "tr",
    { dataset: { exportId: String(exported.id), status: exported.status } },
    el("td", { className: "mono" }, `#${exported.id}`),
    el("td", {}, describe(exported, objectives)),
    el("td", { className: "mono" }, exported.checkpoint || "latest"),
    el("td", {}, exported.created_by),
    el("td", {}, fmtTime(exported.created_at)),
    el("td", {}, outcome),
  );
}

export function setupExport(runId, objectives) {
  const weights = new WeightRow(objectives, null, null, { allowAuto: false });
  setChildren($("export-weights"), weights.node);
  const adapters = $("export-adapters");
  adapters.addEventListener("change", () => $("export-weights").classList.toggle("hidden", adapters.checked));
  let polling = null;

  async function refresh() {
    clearTimeout(polling);
    const list = await api(`/api/runs/${runId}/exports`);
    const body = $("export-list");
    if (!list.length) setChildren(body, el("tr", {}, el("td", { colspan: "6", className: "empty" }, "No exports yet.")));
    else
      setChildren(
        body,
        list.map((exported) => exportRow(exported, objectives)),
      );
    if (list.some((exported) => PENDING_JOB_STATUSES.includes(exported.status))) polling = setTimeout(poll, POLL_MS);
  }

  function poll() {
    refresh().catch(() => (polling = setTimeout(poll, POLL_MS * 4)));
  }

  $("export-button").addEventListener("click", async () => {
    const box = $("export-error");
    box.classList.add("hidden");
    const body = adapters.checked ? { adapters: true } : { weights: weights.value() };
    try {
      await api(`/api/runs/${runId}/exports`, { method: "POST", body });
    } catch (error) {
      box.textContent = `Could not export: ${errorText(error)}`;
      box.classList.remove("hidden");
    }
    await refresh();
  });
  return refresh();
}
