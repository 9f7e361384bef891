// A queue's summary: agreement between reviewers and with the reward objectives, progress, export, close.
import { api, el, errorText, fmtNum, setChildren } from "./common.js";
import { QUEUE_STATUS } from "./contracts.js";

const $ = (id) => document.getElementById(id);
const queueId = $("summary-root").dataset.queueId;

function showError(error) {
  $("summary-error").textContent = errorText(error);
  $("summary-error").classList.remove("hidden");
}

async function load() {
  const [queue, summary] = await Promise.all([api(`/api/review/queues/${queueId}`), api(`/api/review/queues/${queueId}/summary`)]);
  $("summary-name").textContent = `${queue.name}: summary`;
  $("close-queue").disabled = queue.status !== QUEUE_STATUS.OPEN;
  setChildren(
    $("agreement-body"),
    Object.entries(summary.targets).map(([target, t]) =>
      el(
        "tr",
        { dataset: { target } },
        el("td", {}, target),
        el("td", { className: "num" }, String(t.judgements)),
        el("td", { className: "num" }, fmtNum(t.krippendorff_alpha)),
        el("td", { className: "num" }, fmtNum(t.pairwise_agreement)),
        el("td", { className: "num" }, target === "overall" ? "" : fmtNum(t.reward_agreement)),
      ),
    ),
  );
  setChildren(
    $("progress-body"),
    Object.entries(summary.reviewers).map(([reviewer, p]) =>
      el(
        "tr",
        {},
        el("td", {}, reviewer),
        el("td", { className: "num" }, String(p.submitted)),
        el("td", { className: "num" }, String(p.draft)),
        el("td", { className: "num" }, String(summary.items)),
      ),
    ),
  );
}

$("close-queue").addEventListener("click", async () => {
  try {
    await api(`/api/review/queues/${queueId}/close`, { method: "POST" });
    await load();
  } catch (error) {
    showError(error);
  }
});
load().catch(showError);
