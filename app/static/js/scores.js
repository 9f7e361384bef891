// A raw objective score in the words of the objective that gave it: brevity's −38 is "38 words", coverage's 12 is
// "12 content words". Types are the `type`s of meal_core's objective configs; any other type shows the number.
import { fmtNum } from "./common.js";

const READ = {
  brevity: (raw, o) => `${fmtNum(-raw, 3)} ${o.unit || "words"}`,
  coverage: (raw) => `${fmtNum(raw, 3)} content words`,
  sentiment: (raw) => `${fmtNum(raw, 2)} VADER compound (−1…1)`,
  readability: (raw) => `${fmtNum(raw, 3)} Flesch reading ease`,
  relevance: (raw) => `${fmtNum(raw, 2)} cosine to the prompt`,
};

/** `objective`: the run's config entry ({name, type, …}); `raw`: its raw score of one response (or a mean). */
export function scoreText(objective, raw) {
  if (raw === undefined || raw === null || Number.isNaN(raw)) return "–";
  const read = objective && READ[objective.type];
  return read ? read(raw, objective) : fmtNum(raw);
}
