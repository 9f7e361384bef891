// The run page's management: its tags and note (shown to all, edited by its owner or an admin), archiving, and
// deleting it, which asks for the run's name to be typed first: a click alone never deletes a run.
import { api, confirmByName, el, errorText, parseTags, setChildren } from "./common.js";
import { RUN_STATUSES } from "./contracts.js";

const $ = (id) => document.getElementById(id);

/** Show the run's tags, note and what may be done to it now (called whenever the run changes). */
export function renderManage(run) {
  const manage = $("run-root").dataset.canManage === "true";
  setChildren(
    $("run-tags"),
    (run.tags || []).map((tag) => el("span", { className: "tag" }, tag)),
  );
  $("run-note").textContent = run.note || "";
  $("labels-edit").disabled = !manage;
  const active = RUN_STATUSES.ACTIVE.includes(run.status);
  const archive = $("archive-button");
  archive.textContent = run.archived ? "Unarchive" : "Archive";
  archive.disabled = !manage || (active && !run.archived);
  archive.title = active ? "a queued or running run cannot be archived" : "";
  $("delete-button").disabled = !manage || active;
  $("delete-button").title = active ? "stop the run, or let it finish, before deleting it" : "";
}

function showError(box, text) {
  box.textContent = text;
  box.classList.toggle("hidden", !text);
}

export function setupManage(run, changed) {
  const form = $("labels-form");
  const labelsError = $("labels-error");
  $("labels-edit").addEventListener("click", () => {
    $("labels-tags").value = (run.tags || []).join(", ");
    $("labels-note").value = run.note || "";
    form.classList.remove("hidden");
    $("labels-tags").focus();
  });
  $("labels-cancel").addEventListener("click", () => form.classList.add("hidden"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(labelsError, "");
    const body = { tags: parseTags($("labels-tags").value), note: $("labels-note").value };
    try {
      changed(await api(`/api/runs/${run.id}`, { method: "PATCH", body }));
      form.classList.add("hidden");
    } catch (error) {
      showError(labelsError, `Could not save: ${errorText(error)}`);
    }
  });

  const actionError = $("action-error");
  $("archive-button").addEventListener("click", async () => {
    const verb = run.archived ? "unarchive" : "archive";
    showError(actionError, "");
    try {
      changed(await api(`/api/runs/${run.id}/${verb}`, { method: "POST" }));
    } catch (error) {
      showError(actionError, `Could not ${verb} the run: ${errorText(error)}`);
    }
  });

  confirmByName(
    () => run.name,
    async () => {
      showError(actionError, "");
      await api(`/api/runs/${run.id}`, { method: "DELETE" });
      window.location.assign("/");
    },
    (error) => showError(actionError, `Could not delete the run: ${errorText(error)}`),
  );
}
