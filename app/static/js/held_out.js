// A run's final evaluation on its experiment's held-out prompts (GET /api/runs/{id}/held-out-evaluation): shown
// apart from the per-step evaluations, which it is not one of (it never enters their charts or tables).
import { api, el, errorText, fmtNum, setChildren } from "./common.js";

function objectiveRows(held) {
  return held.objectives.map((name, k) => {
    const corner = (held.points || []).find((p) => p.weights[k] === 1);
    return el(
      "tr",
      { dataset: { objective: name } },
      el("td", {}, name),
      el("td", { className: "num" }, fmtNum(held.controllability[name])),
      el("td", { className: "num" }, fmtNum(held.controllability_grid?.[name])),
      el("td", { className: "num" }, fmtNum(held.controllability_null?.[name])),
      el("td", { className: "num" }, corner ? fmtNum(corner.rewards[k]) : "–"),
    );
  });
}

function view(held) {
  const head = ["objective", "controllability ρ per response", "over the grid", "null (p95)", "reward at its corner"];
  return [
    el("h2", {}, "Held-out evaluation"),
    el(
      "div",
      { className: "muted small", id: "held-out-caption" },
      `After the last iteration (${held.step}), on ${held.prompts}: prompts outside training, ` +
        `${held.samples_per_weight} response${held.samples_per_weight === 1 ? "" : "s"} per prompt and weight. ` +
        "Not one of the evaluations above; the experiment's held_out_* figures are these.",
    ),
    el(
      "div",
      { className: "small" },
      "hypervolume ",
      el("b", { className: "mono", id: "held-out-hv" }, fmtNum(held.hypervolume, 4)),
      el("span", { className: "muted" }, `  ·  ${held.responses} responses, ${fmtNum(100 * (held.degenerate_share || 0), 1)} % degenerate`),
    ),
    el(
      "table",
      { className: "data", style: { width: "auto" }, id: "held-out-table" },
      el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
      el("tbody", {}, ...objectiveRows(held)),
    ),
  ];
}

// Fills the card when the run has its held-out evaluation; the card stays hidden until then.
export async function showHeldOut(runId) {
  const card = document.getElementById("held-out-card");
  if (!card) return; // not a run of an experiment
  try {
    const held = await api(`/api/runs/${runId}/held-out-evaluation`);
    if (!held) return;
    setChildren(card, ...view(held));
  } catch (error) {
    setChildren(card, el("div", { className: "error-box" }, `Could not load the held-out evaluation: ${errorText(error)}`));
  }
  card.classList.remove("hidden");
}
