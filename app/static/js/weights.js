// A row of preference-weight sliders that always sum to 1, or "auto" (the run's preference-weight-net decides).
import { el } from "./common.js";

/** Set weight `index` to `value` and scale the others so that all still sum to 1 (equal shares if they were 0). */
export function rebalance(weights, index, value) {
  const target = Math.min(1, Math.max(0, value));
  const others = weights.reduce((sum, w, i) => (i === index ? sum : sum + w), 0);
  const rest = 1 - target;
  return weights.map((w, i) => {
    if (i === index) return target;
    return others > 0 ? (w / others) * rest : rest / (weights.length - 1);
  });
}

export class WeightRow {
  /** `allowAuto`: offer "auto" (the playground does; an export needs numbers). */
  constructor(objectives, initial, onRemove, { allowAuto = true } = {}) {
    this.objectives = objectives;
    this.weights = initial || objectives.map(() => 1 / objectives.length);
    this.auto = el("input", { type: "checkbox", "aria-label": "auto weights" });
    this.sliders = objectives.map((name, k) => {
      const slider = el("input", { type: "range", min: "0", max: "100", step: "1", "aria-label": `weight of ${name}` });
      slider.addEventListener("input", () => {
        this.weights = rebalance(this.weights, k, Number(slider.value) / 100);
        this.render();
      });
      return slider;
    });
    this.labels = objectives.map(() => el("span", { className: "mono small" }));
    this.proposed = null; // what "auto" gave last: unknown until a generation has run
    this.auto.addEventListener("change", () => this.render());
    this.node = el(
      "div",
      { className: "weight-row" },
      objectives.map((name, k) => el("label", { className: "weight-slider" }, `${name} `, this.sliders[k], this.labels[k])),
      allowAuto ? el("label", { className: "small" }, this.auto, " auto") : null,
      onRemove ? el("button", { type: "button", className: "btn small", onclick: () => onRemove(this) }, "Remove") : null,
    );
    this.render();
  }

  render() {
    const shown = this.auto.checked ? this.proposed : this.weights;
    this.sliders.forEach((slider, k) => {
      slider.value = String(Math.round((shown ? shown[k] : this.weights[k]) * 100));
      slider.disabled = this.auto.checked;
      this.labels[k].textContent = this.auto.checked ? (shown ? `auto ${shown[k].toFixed(2)}` : "auto") : this.weights[k].toFixed(2);
    });
  }

  /** With "auto" on: show the weights the net proposed (after a generation), greyed, instead of the manual ones. */
  showProposed(weights) {
    this.proposed = weights.map(Number);
    this.render();
  }

  /** What the API takes: the weights, or "auto". */
  value() {
    return this.auto.checked ? "auto" : this.weights.map((w) => Math.round(w * 10000) / 10000);
  }
}
