// Playground: pick a run and checkpoint, a prompt and 1–4 preference weights, generate, compare side by side.
// Generations run on the workers' playground queue; the page polls the stored generation until it is done.
import { api, el, errorText, fmtNum, setChildren } from "./common.js";
import { scoreText } from "./scores.js";
import { WeightRow } from "./weights.js";
import { JOB_STATUS, PENDING_JOB_STATUSES } from "./contracts.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 800;

// objectives: the run's names; configs: its objective configs (for units); submitted: the id of the generation this
// page asked for with the rows as they are (so "auto" rows can show what the net proposed).
const state = { objectives: [], configs: [], rows: [], generation: null, polling: null, submitted: null };

function showError(error) {
  $("pg-error").textContent = errorText(error);
  $("pg-error").classList.remove("hidden");
}

// -- the form -------------------------------------------------------------------------------------------------------

async function loadRuns() {
  const runs = await api("/api/runs?archived=true"); // archived runs too: only the runs list hides them
  const wanted = $("playground-root").dataset.runId;
  setChildren(
    $("pg-run"),
    runs.map((r) => el("option", { value: String(r.id), selected: String(r.id) === wanted }, `#${r.id} ${r.name} (${r.status})`)),
  );
  if (runs.length) await chooseRun();
  else setChildren($("pg-status"), "No runs yet: launch one first.");
}

async function chooseRun() {
  const runId = $("pg-run").value;
  const run = await api(`/api/runs/${runId}`);
  state.objectives = run.objectives;
  state.configs = run.config.objectives || [];
  // The run's own sampling settings: what its policy was trained and evaluated at.
  const algorithm = run.config.algorithm || {};
  if (algorithm.max_new_tokens) $("pg-max-tokens").value = String(algorithm.max_new_tokens);
  if (algorithm.temperature) $("pg-temperature").value = String(algorithm.temperature);
  // A run whose evaluation prompts the panel may not read (422) still has a playground: type a prompt.
  const [checkpoints, prompts] = await Promise.all([api(`/api/runs/${runId}/checkpoints`), api(`/api/runs/${runId}/prompts`).catch(() => [])]);
  setChildren(
    $("pg-checkpoint"),
    checkpoints.map((c, i) => el("option", { value: c }, i === 0 && c !== "base" ? `${c} (latest)` : c)),
  );
  setChildren(
    $("pg-eval-prompt"),
    el("option", { value: "" }, "—"),
    prompts.map((p) => el("option", { value: p }, clip(p, 90))),
  );
  const k = state.objectives.length;
  const corner = (i) => state.objectives.map((_, j) => (j === i ? 1 : 0));
  state.rows = [];
  setChildren($("pg-weights"));
  addRow(k === 2 ? corner(0) : null);
  addRow(k === 2 ? corner(1) : null);
  await loadHistory();
}

function addRow(initial) {
  if (state.rows.length >= 4) return;
  const row = new WeightRow(state.objectives, initial, state.rows.length ? removeRow : null);
  state.rows.push(row);
  $("pg-weights").append(row.node);
  $("pg-add-weights").disabled = state.rows.length >= 4;
}

function removeRow(row) {
  state.rows = state.rows.filter((r) => r !== row);
  row.node.remove();
  $("pg-add-weights").disabled = false;
}

async function submit(event) {
  event.preventDefault();
  $("pg-error").classList.add("hidden");
  $("pg-generate").disabled = true;
  try {
    const body = {
      run_id: Number($("pg-run").value),
      checkpoint: $("pg-checkpoint").value || null,
      prompt: $("pg-prompt").value,
      weights: state.rows.map((r) => r.value()),
      seed: Number($("pg-seed").value),
      temperature: Number($("pg-temperature").value),
      max_new_tokens: Number($("pg-max-tokens").value),
      samples: Number($("pg-samples").value),
    };
    const { id } = await api("/api/playground", { method: "POST", body });
    state.submitted = id;
    follow(id);
  } catch (error) {
    showError(error);
    $("pg-generate").disabled = false;
  }
}

// -- outputs --------------------------------------------------------------------------------------------------------

function follow(id) {
  clearTimeout(state.polling);
  const poll = async () => {
    try {
      const generation = await api(`/api/playground/${id}`);
      render(generation);
      if (PENDING_JOB_STATUSES.includes(generation.status)) state.polling = setTimeout(poll, POLL_MS);
      else {
        $("pg-generate").disabled = false;
        loadHistory();
      }
    } catch (error) {
      showError(error);
      $("pg-generate").disabled = false;
    }
  };
  poll();
}

/** Against the run's last evaluation, in plain words: does any of its trade-off points do better on everything? */
function placement(front) {
  if (!front || front.evaluation_step === null) return "No evaluation yet to compare with.";
  const where = `the ${front.front_points} best trade-offs of the evaluation at iteration ${front.evaluation_step}`;
  if (front.dominated_by > 0) return `${front.dominated_by} of ${where} do better on every objective.`;
  if (front.dominates > 0) return `Better on every objective than ${front.dominates} of ${where}.`;
  return `None of ${where} does better on every objective.`;
}

function configOf(name) {
  return state.configs.find((o) => o.name === name) || { name };
}

function sampleCard(sample, names) {
  return el(
    "div",
    { className: "pg-sample" },
    el("div", { className: "pg-text" }, sample.text),
    el(
      "table",
      { className: "data small" },
      el(
        "tbody",
        {},
        names.map((n) =>
          el(
            "tr",
            {},
            el("td", {}, n),
            el("td", { className: "num" }, scoreText(configOf(n), sample.scores[n])),
            el("td", { className: "num muted" }, sample.normalized[n] === undefined ? "" : `(${fmtNum(sample.normalized[n], 2)})`),
          ),
        ),
      ),
    ),
    el("div", { className: "muted small" }, placement(sample.front)),
  );
}

function render(generation) {
  state.generation = generation;
  const names = state.objectives;
  const who = `#${generation.id} by ${generation.created_by}, checkpoint ${generation.checkpoint || "latest"}, seed ${generation.seed}`;
  setChildren($("pg-status"), `${generation.status} · ${who}`);
  $("pg-review").classList.toggle("hidden", generation.status !== JOB_STATUS.SUCCEEDED);
  if (generation.status === JOB_STATUS.FAILED) {
    setChildren($("pg-outputs"), el("div", { className: "error-box" }, generation.error || "failed"));
    return;
  }
  if (!generation.outputs) {
    setChildren($("pg-outputs"), el("div", { className: "muted" }, "Generating…"));
    return;
  }
  if (generation.id === state.submitted) showProposed(generation.outputs);
  setChildren(
    $("pg-outputs"),
    generation.outputs.map((output) =>
      el(
        "div",
        { className: "pg-column" },
        el("h3", {}, weightsText(output.weights), output.auto ? el("span", { className: "badge" }, "auto") : null),
        output.samples.length > 1 ? meanTable(output.samples, names) : null,
        output.samples.map((s) => sampleCard(s, names)),
      ),
    ),
  );
}

function weightsText(weights) {
  return state.objectives.map((n, k) => `${n} ${Number(weights[k]).toFixed(2)}`).join(" · ");
}

/** The mean of each objective over a weight's samples: one sample each can order the weights by chance. */
function meanTable(samples, names) {
  const mean = (n) => samples.reduce((sum, s) => sum + s.scores[n], 0) / samples.length;
  return el(
    "table",
    { className: "data small pg-mean" },
    el("caption", { className: "muted small" }, `mean of ${samples.length} samples`),
    el(
      "tbody",
      {},
      names.map((n) => el("tr", {}, el("td", {}, n), el("td", { className: "num" }, scoreText(configOf(n), mean(n))))),
    ),
  );
}

/** The "auto" rows of the form show the weights the run's net proposed for this prompt. */
function showProposed(outputs) {
  outputs.forEach((output, i) => {
    if (output.auto && state.rows[i]) state.rows[i].showProposed(output.weights);
  });
}

async function loadHistory() {
  const runId = $("pg-run").value;
  if (!runId) return;
  const generations = await api(`/api/playground?run_id=${runId}&limit=20`);
  setChildren(
    $("pg-history"),
    generations.length
      ? generations.map((g) =>
          el(
            "li",
            {},
            el("button", { type: "button", className: "link-button dark", onclick: () => follow(g.id) }, `#${g.id}`),
            ` ${g.status} · ${g.created_by} · ${g.checkpoint || "latest"} · `,
            g.weights.map((w) => (w === "auto" ? "auto" : `(${w.map((v) => Number(v).toFixed(2)).join(", ")})`)).join(" "),
            ` · ×${g.samples} · `,
            clip(g.prompt, 80),
          ),
        )
      : el("li", { className: "muted" }, "None yet."),
  );
}

/** At most `length` characters, cut at a word boundary with "…" (a queue title cut mid-word read as a typo). */
function clip(text, length) {
  const flat = text.replace(/\s+/g, " ").trim();
  if (flat.length <= length) return flat;
  const cut = flat.slice(0, length);
  const space = cut.lastIndexOf(" ");
  return `${(space > length / 2 ? cut.slice(0, space) : cut).replace(/[\s.,;:!?-]+$/, "")}…`;
}

// -- main -----------------------------------------------------------------------------------------------------------

$("pg-run").addEventListener("change", () => chooseRun().catch(showError));
$("pg-eval-prompt").addEventListener("change", () => {
  if ($("pg-eval-prompt").value) $("pg-prompt").value = $("pg-eval-prompt").value;
});
$("pg-add-weights").addEventListener("click", () => addRow(null));
$("pg-review").addEventListener("click", async () => {
  const generation = state.generation;
  try {
    const name = `Playground #${generation.id}: ${clip(generation.prompt, 60)}`;
    const queue = await api("/api/review/queues", { method: "POST", body: { name, blind: true, source: { type: "playground", generation_ids: [generation.id] } } });
    window.location.assign(`/review/${queue.id}`);
  } catch (error) {
    showError(error);
  }
});
$("playground-form").addEventListener("submit", submit);
loadRuns().catch(showError);
