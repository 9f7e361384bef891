// Shared helpers of the Meal Studio pages. Untrusted text (run names, prompts, responses, errors, config values)
// only ever enters the page through text nodes: `el()` never parses HTML.
import { RUN_PHASE, RUN_STATUS, RUN_STATUSES } from "./contracts.js";

/** Build an element. attrs: className, dataset, style (object), on<Event> handlers, or plain attributes.
 *  Children: nodes, or anything else, which becomes a text node. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "className") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "style" && typeof value === "object") Object.assign(node.style, value);
    else if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "checked" || name === "disabled" || name === "selected" || name === "open") node[name] = !!value;
    else if (name === "value") node.value = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }
}

/** Tags as typed ("sweep, LR high") → the list the server normalises (to "sweep", "lr-high"). */
export function parseTags(text) {
  return text
    .split(",")
    .map((tag) => tag.trim())
    .filter((tag) => tag);
}

/** Replace all children of `node` (text nodes for non-nodes). */
export function setChildren(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

/** fetch() a JSON endpoint; throws ApiError (with the response's `detail`) on a non-2xx answer. */
/** The CSRF token of this page's session (a meta tag the server renders): every change sends it back. */
function csrfToken() {
  const meta = document.querySelector("meta[name=csrf-token]");
  return meta ? meta.content : "";
}

export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (!["GET", "HEAD"].includes(method)) init.headers["X-CSRF-Token"] = csrfToken();
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (response.status === 401 && !path.startsWith("/api/auth/login")) {
    // The session ended (logged out elsewhere, expired): back to the login page, and here afterwards.
    window.location.assign(`/login?next=${encodeURIComponent(window.location.pathname + window.location.search)}`);
  }
  if (!response.ok) throw new ApiError(response.status, data && data.detail !== undefined ? data.detail : data);
  return data;
}

/** A readable message from an ApiError's detail (a string, or FastAPI's list of {loc, msg}). */
export function errorText(error) {
  if (!(error instanceof ApiError)) return String(error && error.message ? error.message : error);
  const detail = error.detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  if (typeof detail === "string") return detail;
  return `HTTP ${error.status}`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(s).padStart(2, "0")}s`;
  return `${s}s`;
}

export function fmtTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (isNaN(date)) return String(iso);
  return date.toLocaleString(undefined, {
    year: "numeric",
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
  });
}

export function fmtAgo(iso) {
  if (!iso) return "";
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (!isFinite(seconds)) return "";
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

/** Compact number formatting for tables and legends. */
export function fmtNum(value, digits = 3) {
  if (value === null || value === undefined || !isFinite(value)) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e5 || abs < 1e-3)) return value.toExponential(2);
  if (abs >= 100) return value.toFixed(1);
  return value.toFixed(digits);
}

export function statusBadge(status, attrs = {}) {
  return el("span", { ...attrs, className: `badge status-${status}` }, status);
}

/** How each phase of a held run (RUN_PHASE, meal_core/enums.py) reads: what it does, given the run, and what its
 *  units are ("": no count on this line). tests/test_browser.py checks that every phase has an entry. */
export const PHASE_TEXT = Object.freeze({
  [RUN_PHASE.LOADING]: { label: () => "Loading the model and the objectives", unit: "" },
  [RUN_PHASE.CALIBRATING]: { label: () => "Calibrating the objectives on the base policy", unit: "responses" },
  [RUN_PHASE.EVALUATING]: {
    // run.iteration is the last iteration reported done, which is reported after its evaluation: not the one evaluated.
    label: (run) => (run.iteration ? "Evaluating the trained policy" : "Evaluating the policy"),
    unit: "generations",
  },
  [RUN_PHASE.WARM_START]: { label: () => "Warm start on the base policy's responses", unit: "responses" },
  // The count and ETA of the iterations are the progress bar's: this line says which one is under way.
  [RUN_PHASE.TRAINING]: { label: (run) => `Training iteration ${Math.min(run.phase_done + 1, run.phase_total)} of ${run.phase_total}`, unit: "" },
  [RUN_PHASE.CHECKPOINTING]: { label: () => "Saving a checkpoint", unit: "" },
});

/** What a held run does now: "Evaluating the policy: 96 / 264 generations, about 12m 00s left"; "" when
 *  no worker holds it (its status says the rest). */
export function phaseText(run) {
  const text = run.phase && RUN_STATUSES.HELD.includes(run.status) ? PHASE_TEXT[run.phase] : null;
  if (!text) return "";
  const count = text.unit && run.phase_total ? `: ${run.phase_done} / ${run.phase_total} ${text.unit}` : "";
  const eta = count && run.phase_eta_seconds != null ? `, about ${fmtDuration(run.phase_eta_seconds)} left` : "";
  return `${text.label(run)}${count}${eta}`;
}

/** The progress cell: bar + "iteration / total" + ETA, and under it the phase a held run is in. */
export function progressView(run) {
  const total = Math.max(run.total_iterations || 0, 1);
  const pct = Math.min(100, (100 * (run.iteration || 0)) / total);
  const bar = el("div", { className: "bar" }, el("span", { style: { width: `${pct.toFixed(1)}%` } }));
  if (run.status === RUN_STATUS.SUCCEEDED) bar.classList.add("done");
  if (run.status === RUN_STATUS.FAILED) bar.classList.add("failed");
  const label = `${run.iteration || 0} / ${run.total_iterations} iterations`;
  const eta = RUN_STATUSES.HELD.includes(run.status) && run.eta_seconds != null ? ` · ETA ${fmtDuration(run.eta_seconds)}` : "";
  const phase = phaseText(run);
  return el(
    "div",
    { className: "progress-cell" },
    el("div", { className: "progress" }, bar, el("span", { className: "small mono" }, label + eta)),
    phase ? el("div", { className: "phase small muted" }, phase) : null,
  );
}

export const PALETTE = ["#2f6feb", "#e5534b", "#1f8a4c", "#b26a00", "#8250df", "#0b8a8a", "#d6336c", "#5c6b7a", "#f08c00", "#2b8a3e"];

export function color(i) {
  return PALETTE[i % PALETTE.length];
}

/** rgba() of a #rrggbb color. */
export function alpha(hex, a) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
}

/** Exponential moving average over a series with gaps (null stays null). factor 0 = no smoothing. */
export function ema(values, factor) {
  if (!factor) return values;
  const out = new Array(values.length);
  let last = null;
  let weight = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || v === undefined || !isFinite(v)) {
      out[i] = null;
      continue;
    }
    // Debiased like TensorBoard's: the first points are not pulled toward 0.
    last = last === null ? (1 - factor) * v : factor * last + (1 - factor) * v;
    weight = factor * weight + (1 - factor);
    out[i] = last / weight;
  }
  return out;
}

/** {a: {b: 1}, c: [x, y]} → {"a.b": 1, "c.0": x, "c.1": y}; empty objects and lists are kept as values. */
export function flatten(value, prefix = "", out = {}) {
  if (value !== null && typeof value === "object" && Object.keys(value).length) {
    for (const [key, child] of Object.entries(value)) flatten(child, prefix ? `${prefix}.${key}` : key, out);
  } else {
    out[prefix] = value;
  }
  return out;
}

export function shortJson(value) {
  if (value === undefined) return "—";
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** Run `fn` every `ms`, never overlapping itself; pauses while the tab is hidden. Returns a stopper. */
export function every(ms, fn) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await fn();
      } catch (error) {
        console.warn(error);
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  timer = setTimeout(tick, ms);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/**
 * A "type its name to confirm" step (ids: delete-button opens it, delete-confirm is its box, delete-confirm-name
 * the input, delete-confirm-button enabled only once name() is typed, delete-cancel): a click alone never
 * deletes. `action` runs on confirm; if it throws, the box closes and `onError` gets the error.
 */
export function confirmByName(name, action, onError) {
  const box = document.getElementById("delete-confirm");
  const typed = document.getElementById("delete-confirm-name");
  const button = document.getElementById("delete-confirm-button");
  const matches = () => typed.value === name();
  document.getElementById("delete-button").addEventListener("click", () => {
    typed.value = "";
    button.disabled = true;
    box.classList.remove("hidden");
    typed.focus();
  });
  document.getElementById("delete-cancel").addEventListener("click", () => box.classList.add("hidden"));
  typed.addEventListener("input", () => (button.disabled = !matches()));
  button.addEventListener("click", async () => {
    if (!matches()) return;
    button.disabled = true;
    try {
      await action();
    } catch (error) {
      box.classList.add("hidden");
      onError(error);
    }
  });
}
