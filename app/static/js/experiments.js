// The experiments list: each links to its page.
import { api, el, errorText, fmtTime, setChildren } from "./common.js";

const $ = (id) => document.getElementById(id);

async function load() {
  const experiments = await api("/api/experiments");
  setChildren(
    $("experiments-body"),
    experiments.length
      ? experiments.map((e) =>
          el(
            "tr",
            { dataset: { experimentId: String(e.id) } },
            el("td", {}, el("a", { href: `/experiments/${e.id}` }, e.name)),
            el("td", {}, e.baseline),
            el("td", { className: "num" }, `${e.finished} / ${e.runs}`),
            el("td", {}, e.created_by || "–"),
            el("td", {}, fmtTime(e.created_at)),
          ),
        )
      : el("tr", {}, el("td", { colspan: "5", className: "muted" }, "No experiments yet.")),
  );
}

load().catch((error) => {
  $("experiments-error").textContent = errorText(error);
  $("experiments-error").classList.remove("hidden");
});
