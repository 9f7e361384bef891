// Steering: does the policy follow the weights? For each objective, the mean reward the evaluation obtained
// against the weight asked for that objective, one line per evaluation. A policy that steers draws rising lines.

/**
 * uPlot data for objective `k`: [asked weights (sorted), one series per evaluation of the mean normalised reward on
 * `k` over the evaluation points that asked for that weight]. With K ≥ 3 several lattice points share a w_k; their
 * rewards are averaged.
 */
export function steeringData(evaluations, k) {
  const key = (w) => Math.round(w * 1e6) / 1e6;
  const xs = [...new Set(evaluations.flatMap((e) => (e.points || []).map((p) => key(p.weights[k]))))].sort((a, b) => a - b);
  const series = evaluations.map((e) => {
    const sums = new Map();
    for (const p of e.points || []) {
      const x = key(p.weights[k]);
      const [total, count] = sums.get(x) || [0, 0];
      sums.set(x, [total + p.rewards[k], count + 1]);
    }
    return xs.map((x) => (sums.has(x) ? sums.get(x)[0] / sums.get(x)[1] : null));
  });
  return [xs, ...series];
}

/** One line per evaluation: the latest in the objective's colour, earlier ones fading grey. */
export function steeringSeries(evaluations, objectiveColor) {
  const latest = evaluations.length - 1;
  return evaluations.map((e, i) => ({
    label: `iteration ${e.step}`,
    color: i === latest ? objectiveColor : `rgba(152, 162, 179, ${0.25 + (0.5 * (i + 1)) / Math.max(latest, 1)})`,
    width: i === latest ? 2.2 : 1.2,
  }));
}
