// Review queues: the list with your progress, and (trainers) building a queue from a run's samples.
import { api, el, errorText, setChildren } from "./common.js";

const $ = (id) => document.getElementById(id);
const trainer = $("review-root").dataset.trainer === "yes";

function showError(error) {
  $("review-error").textContent = errorText(error);
  $("review-error").classList.remove("hidden");
}

function numberOrNull(id) {
  const value = $(id).value;
  return value === "" ? null : Number(value);
}

async function loadQueues() {
  const queues = await api("/api/review/queues");
  setChildren(
    $("queues-body"),
    queues.length
      ? queues.map((q) =>
          el(
            "tr",
            { dataset: { queueId: String(q.id) } },
            el("td", {}, el("a", { href: `/review/${q.id}`, className: "queue-link" }, q.name)),
            el("td", {}, q.kind, q.blind ? " · blind" : ""),
            el("td", {}, q.status),
            el("td", { className: "num" }, String(q.items)),
            el("td", { className: "num" }, `${q.mine.submitted || 0} submitted, ${q.mine.draft || 0} drafts`),
            el("td", {}, q.created_by),
            el("td", {}, trainer ? el("a", { href: `/review/${q.id}/summary` }, "summary") : ""),
          ),
        )
      : el("tr", {}, el("td", { colSpan: 7, className: "empty" }, "No review queues yet.")),
  );
}

async function loadRuns() {
  const runs = await api("/api/runs?archived=true"); // archived runs too: only the runs list hides them
  setChildren(
    $("q-run"),
    runs.map((r) => el("option", { value: String(r.id) }, `#${r.id} ${r.name}`)),
  );
  const first = runs[0];
  const objectives = first ? first.objectives : [];
  setChildren(
    $("q-weight-objective"),
    el("option", { value: "" }, "(any weights)"),
    objectives.map((o) => el("option", { value: o }, o)),
  );
}

async function build(event) {
  event.preventDefault();
  $("review-error").classList.add("hidden");
  try {
    const source = {
      type: "samples",
      run_id: Number($("q-run").value),
      step_min: numberOrNull("q-step-min"),
      step_max: numberOrNull("q-step-max"),
      weight_objective: $("q-weight-objective").value || null,
      weight_min: Number($("q-weight-min").value),
      weight_max: Number($("q-weight-max").value),
      accepted_only: $("q-accepted").checked,
      random_n: numberOrNull("q-random-n"),
    };
    const queue = await api("/api/review/queues", { method: "POST", body: { name: $("q-name").value, blind: $("q-blind").checked, source } });
    window.location.assign(`/review/${queue.id}`);
  } catch (error) {
    showError(error);
  }
}

if (trainer) {
  $("build-form").addEventListener("submit", build);
  loadRuns().catch(showError);
}
loadQueues().catch(showError);
