// Reviewing a queue, one item at a time: ratings 1–5 (single responses) or A / B / tie (comparisons) per objective
// and overall, a comment; save as a draft or submit. Blind queues show the responses' text only.
import { api, el, errorText, fmtNum, setChildren } from "./common.js";
import { QUEUE_KIND, QUEUE_STATUS, REVIEW_STATUS } from "./contracts.js";

const $ = (id) => document.getElementById(id);
const queueId = $("queue-root").dataset.queueId;
const state = { queue: null, items: [], index: 0 };

function showError(error) {
  $("queue-error").textContent = errorText(error);
  $("queue-error").classList.remove("hidden");
}

function choices() {
  return state.queue.kind === QUEUE_KIND.SINGLE ? ["1", "2", "3", "4", "5"] : ["A", "B", "tie"];
}

function ratingRow(target, current) {
  const name = `rate-${target}`;
  const rubric = (state.queue.rubric || {})[target];
  return el(
    "tr",
    {},
    el("td", {}, el("div", {}, target), rubric ? el("div", { className: "muted small rubric" }, rubric) : null),
    el(
      "td",
      {},
      choices().map((value) => el("label", { className: "rating" }, el("input", { type: "radio", name, value, checked: current === value, dataset: { target } }), ` ${value}`)),
    ),
  );
}

function responseCard(response, label) {
  const meta = [];
  if (response.weights)
    meta.push(
      `weights ${Object.entries(response.weights)
        .map(([k, v]) => `${k} ${Number(v).toFixed(2)}`)
        .join(" · ")}`,
    );
  if (response.scores)
    meta.push(
      `scores ${Object.entries(response.scores)
        .map(([k, v]) => `${k} ${fmtNum(v)}`)
        .join(" · ")}`,
    );
  if (response.run_id) meta.push(`run #${response.run_id}${response.step !== undefined ? `, iteration ${response.step}` : ""}`);
  return el(
    "div",
    { className: "pg-column" },
    label ? el("h3", {}, label) : null,
    el(
      "div",
      { className: "pg-sample" },
      el("div", { className: "pg-text" }, response.text),
      meta.map((m) => el("div", { className: "muted small" }, m)),
    ),
  );
}

function render() {
  const item = state.items[state.index];
  if (!item) {
    setChildren($("item-prompt"), "This queue has no items.");
    return;
  }
  $("item-label").textContent = `item ${state.index + 1} of ${state.items.length}`;
  const submitted = state.items.filter((i) => i.review && i.review.status === REVIEW_STATUS.SUBMITTED).length;
  $("item-progress").textContent = `${submitted} submitted`;
  $("item-prompt").textContent = item.prompt;
  const labels = state.queue.kind === QUEUE_KIND.COMPARISON ? ["A", "B"] : [null];
  setChildren(
    $("item-responses"),
    item.responses.map((r, i) => responseCard(r, labels[i])),
  );
  const review = item.review || { ratings: {}, overall: null, comment: "", status: null };
  setChildren($("rating-body"), [...state.queue.objectives.map((o) => ratingRow(o, review.ratings[o])), ratingRow("overall", review.overall)]);
  $("review-comment").value = review.comment || "";
  $("review-state").textContent = review.status ? `your review: ${review.status}` : "not reviewed yet";
  const closed = state.queue.status !== QUEUE_STATUS.OPEN;
  for (const id of ["save-draft", "submit-review"]) $(id).disabled = closed;
  // A submitted review changes only by submitting it again (the server refuses a draft save: 409).
  if (review.status === REVIEW_STATUS.SUBMITTED) $("save-draft").disabled = true;
  if (closed) $("review-state").textContent += " · the queue is closed";
  $("item-prev").disabled = state.index === 0;
  $("item-next").disabled = state.index >= state.items.length - 1;
}

async function save(submit) {
  $("queue-error").classList.add("hidden");
  const item = state.items[state.index];
  const ratings = {};
  let overall = null;
  for (const input of document.querySelectorAll("#rating-body input:checked")) {
    if (input.dataset.target === "overall") overall = input.value;
    else ratings[input.dataset.target] = input.value;
  }
  try {
    state.items[state.index] = await api(`/api/review/items/${item.id}/review`, { method: "PUT", body: { ratings, overall, comment: $("review-comment").value, submit } });
    if (submit && state.index < state.items.length - 1) state.index += 1;
    render();
  } catch (error) {
    showError(error);
  }
}

async function main() {
  [state.queue, state.items] = await Promise.all([api(`/api/review/queues/${queueId}`), api(`/api/review/queues/${queueId}/items`)]);
  $("queue-name").textContent = state.queue.name;
  $("queue-meta").textContent = `${state.queue.kind}${state.queue.blind ? " · blind" : ""} · ${state.queue.status} · built by ${state.queue.created_by}`;
  const firstOpen = state.items.findIndex((i) => !i.review || i.review.status !== REVIEW_STATUS.SUBMITTED);
  state.index = firstOpen >= 0 ? firstOpen : 0;
  render();
}

$("item-prev").addEventListener("click", () => {
  state.index = Math.max(0, state.index - 1);
  render();
});
$("item-next").addEventListener("click", () => {
  state.index = Math.min(state.items.length - 1, state.index + 1);
  render();
});
$("save-draft").addEventListener("click", () => save(false));
$("review-form").addEventListener("submit", (event) => {
  event.preventDefault();
  save(true);
});
main().catch(showError);
