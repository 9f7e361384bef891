// New run page: a form generated from the run configuration's JSON schema (GET /api/config/schema).
//
// Each schema node becomes a widget with get() (the value to send; undefined = leave out, the server's default
// applies), set(value) (undefined = the schema's default), slot(pathParts) (where an error for that path is shown)
// and setPath(path) (names inputs by dotted path, e.g. "algorithm.temperature" or "objectives.0.name").
//
// "Vary this field": beside each scalar a control that turns it into a list of values. Any field varied makes the
// submit "Launch experiment", which POSTs an experiment (every combination × every seed, see POST /api/experiments)
// instead of a run; the seed field takes a count or a list of seeds and algorithm.name a choice of algorithms.
import { api, ApiError, el, errorText, parseTags, setChildren } from "./common.js";
import { EXPERIMENT_SET_BY } from "./contracts.js";

const SECTION_ORDER = ["model", "lora", "objectives", "data", "algorithm", "eval", "checkpoint"];
const OPEN_SECTIONS = new Set(["run", "model", "objectives", "data"]);

let defs = {};

function resolve(schema) {
  let s = schema || {};
  for (let guard = 0; s.$ref && guard < 20; guard++) s = defs[s.$ref.split("/").pop()] || {};
  return s;
}

/** {schema, nullable}: unwraps anyOf [X, null]. */
function unwrap(schema) {
  const s = resolve(schema);
  if (Array.isArray(s.anyOf)) {
    const others = s.anyOf.filter((o) => resolve(o).type !== "null");
    if (others.length === 1 && others.length < s.anyOf.length) {
      const inner = resolve(others[0]);
      return {
        schema: { ...inner, default: s.default, description: s.description, title: s.title },
        nullable: true,
      };
    }
  }
  return { schema: s, nullable: false };
}

function constraintsText(s, nullable) {
  const parts = [];
  if (s.minimum !== undefined) parts.push(`≥ ${s.minimum}`);
  if (s.exclusiveMinimum !== undefined) parts.push(`> ${s.exclusiveMinimum}`);
  if (s.maximum !== undefined) parts.push(`≤ ${s.maximum}`);
  if (s.exclusiveMaximum !== undefined) parts.push(`< ${s.exclusiveMaximum}`);
  if (s.minItems !== undefined && s.type === "array") parts.push(`at least ${s.minItems} item${s.minItems === 1 ? "" : "s"}`);
  if (s.pattern) parts.push(`pattern ${s.pattern}`);
  if (nullable) parts.push("empty = none");
  return parts.join(", ");
}

/** Error display for one field or section. */
class Slot {
  constructor(container, messageEl) {
    this.container = container;
    this.messageEl = messageEl;
  }

  show(message) {
    const previous = this.messageEl.textContent;
    this.messageEl.textContent = previous ? `${previous}; ${message}` : message;
    this.container.classList.add("has-error");
    for (let node = this.container; node; node = node.parentElement) if (node.tagName === "DETAILS") node.open = true;
  }

  clear() {
    this.messageEl.textContent = "";
    this.container.classList.remove("has-error");
  }
}

// Words a field name spells in lower case that people write otherwise.
const WORDS = {
  cpu: "CPU",
  lora: "LoRA",
  sft: "SFT",
  kl: "KL",
  lr: "learning rate",
  id: "ID",
  hf: "HF",
  rm: "RM",
  url: "URL",
  ema: "EMA",
  ngram: "n-gram",
  dtype: "data type",
  mlp: "MLP",
};

/** "cpu_threads" → "CPU threads", "name_or_path" → "Name or path": a sentence, not pydantic's "Cpu Threads" (its
 * automatic title; a title the schema sets on purpose differs from that and is kept). */
function fieldLabel(name, title) {
  const automatic = name
    .split("_")
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join(" ");
  if (title && title !== automatic) return title;
  const words = name.split("_").map((w) => WORDS[w] || w);
  const first = words[0];
  words[0] = first === first.toLowerCase() ? first.charAt(0).toUpperCase() + first.slice(1) : first;
  return words.join(" ");
}

/** A labelled row: label, control, help, error. */
function fieldRow(name, s, control, nullable) {
  const id = `f-${Math.random().toString(36).slice(2, 10)}`;
  control.id = id;
  const error = el("div", { className: "error-msg", role: "alert" });
  const constraint = constraintsText(s, nullable);
  const help = [s.description, constraint && `(${constraint})`].filter(Boolean).join(" ");
  const row = el(
    "div",
    { className: "field" },
    el("label", { for: id }, fieldLabel(name, s.title), el("span", { className: "key" }, name)),
    el("div", { className: "control" }, control, help ? el("div", { className: "help" }, help) : null, error),
  );
  return { row, slot: new Slot(row, error) };
}

// The kinds of field a list of values can replace, and those whose values are picked from a list.
const VARY_KINDS = new Set(["integer", "number", "string", "enum", "boolean"]);
const CHOICE_KINDS = new Set(["enum", "boolean"]);
const varied = new Set(); // the VaryControls turned on (those of removed objectives drop out: not connected)
let onVaryChange = () => {};

/** The list of values one scalar field takes in an experiment: typed comma-separated, or picked for a choice. */
/** A JSON list typed into a vary box (it starts with "["), or null for the comma-separated form. */
function jsonList(raw) {
  if (!raw.startsWith("[")) return null;
  try {
    const list = JSON.parse(raw);
    return Array.isArray(list) ? list : null;
  } catch {
    return null; // sent split at commas: the server names what it refuses
  }
}

class VaryControl {
  constructor(widget) {
    this.widget = widget;
    this.on = false;
    this.toggle = el("button", { type: "button", className: "btn small vary-toggle", onclick: () => this.setOn(!this.on) }, "Vary this field");
    const kind = widget.kind;
    if (CHOICE_KINDS.has(kind)) {
      const options = kind === "boolean" ? ["true", "false"] : widget.s.enum;
      this.values = el(
        "select",
        { multiple: true, size: Math.min(options.length, 6) },
        options.map((v) => el("option", { value: v }, v)),
      );
    } else {
      this.values = el("input", { type: "text", spellcheck: "false", autocomplete: "off" });
    }
    this.values.classList.add("vary-values");
    this.help = el("div", { className: "help" });
    this.box = el("div", { className: "vary hidden" }, this.values, this.help);
    this.el = el("div", { className: "vary-wrap" }, this.toggle, this.box);
  }

  /** The experiment field this one is (seeds, algorithms), or undefined for a field of `vary`. */
  setBy() {
    return EXPERIMENT_SET_BY[this.path];
  }

  setPath(path) {
    this.path = path;
    this.values.name = `vary:${path}`;
    this.values.dataset.varyPath = path;
    this.toggle.dataset.varyPath = path;
    const choice = CHOICE_KINDS.has(this.widget.kind);
    const setBy = this.setBy();
    this.toggle.textContent = this.on ? "Don't vary" : setBy === "seeds" ? "Several seeds" : setBy ? `Several (${setBy})` : "Vary this field";
    if (!choice) this.values.placeholder = setBy === "seeds" ? "e.g. 3 (seeds 0, 1, 2) or 0, 1, 2" : "e.g. 0.01, 0.02";
    this.help.textContent =
      setBy === "seeds"
        ? "Seeds: a count N (seeds 0 … N−1) or a comma-separated list; every variant runs with each, paired by seed."
        : choice
          ? "Pick the values (Ctrl or Shift for several): one variant each, combined with every other varied field."
          : `Values, comma-separated (e.g. 0.01, 0.02${this.widget.nullable ? ", none" : ""}), or a JSON list for values ` +
            'with commas (["a, b", "c"]): one variant each, combined with every other varied field.';
  }

  setOn(on) {
    this.on = on;
    this.box.classList.toggle("hidden", !on);
    this.widget.input.disabled = on; // every variant sets it: its single value is not used
    if (on) {
      const current = String(this.widget.get() ?? "");
      if (this.values.tagName === "SELECT") for (const option of this.values.options) option.selected = option.value === current;
      else if (!this.values.value && this.setBy() !== "seeds") this.values.value = current; // "0" is no count
      varied.add(this);
    } else varied.delete(this);
    this.setPath(this.path);
    onVaryChange();
  }

  /** The values to send: a list (a count for "seeds: 3"); the server names any it refuses. */
  value() {
    if (this.values.tagName === "SELECT") {
      const picked = [...this.values.selectedOptions].map((o) => o.value);
      return this.widget.kind === "boolean" ? picked.map((v) => v === "true") : picked;
    }
    const raw = this.values.value.trim();
    const list = jsonList(raw); // ["a, b", null]: values with commas, or exactly typed
    if (list) return list;
    const items = raw
      .split(",")
      .map((x) => x.trim())
      .filter((x) => x !== "");
    const numeric = this.widget.kind === "integer" || this.widget.kind === "number";
    const typed = items.map((x) => {
      if (this.widget.nullable && x.toLowerCase() === "none") return null;
      return numeric && Number.isFinite(Number(x)) ? Number(x) : x;
    });
    return this.setBy() === "seeds" && typed.length === 1 && Number.isInteger(typed[0]) ? typed[0] : typed;
  }
}

class ScalarWidget {
  constructor(name, schema) {
    const { schema: s, nullable } = unwrap(schema);
    this.s = s;
    this.nullable = nullable;
    this.kind = this.kindOf(s);
    this.input = this.makeInput();
    const { row, slot } = fieldRow(name, s, this.input, nullable);
    this.el = row;
    this.errorSlot = slot;
    if (VARY_KINDS.has(this.kind)) {
      this.vary = new VaryControl(this);
      this.input.after(this.vary.el);
    }
  }

  kindOf(s) {
    if (Array.isArray(s.enum)) return "enum";
    if (s.type === "boolean") return "boolean";
    if (s.type === "integer" || s.type === "number") return s.type;
    if (s.type === "array") return resolve(s.items).type === "number" || resolve(s.items).type === "integer" ? "numlist" : "strlist";
    if (s.type === "string" && typeof s.default === "string" && s.default.includes("\n")) return "multiline";
    return "string";
  }

  makeInput() {
    const s = this.s;
    switch (this.kind) {
      case "enum": {
        const options = s.enum.map((v) => el("option", { value: v }, v));
        if (this.nullable) options.unshift(el("option", { value: "" }, "(none)"));
        return el("select", {}, options);
      }
      case "boolean":
        return el("input", { type: "checkbox" });
      case "integer":
      case "number": {
        const attrs = { type: "number", step: this.kind === "integer" ? "1" : "any" };
        if (s.minimum !== undefined) attrs.min = s.minimum;
        if (s.maximum !== undefined) attrs.max = s.maximum;
        if (this.nullable) attrs.placeholder = "none";
        return el("input", attrs);
      }
      case "numlist":
      case "strlist":
        return el("input", { type: "text", placeholder: this.nullable ? "none (comma-separated list)" : "comma-separated" });
      case "multiline":
        return el("textarea", { rows: 2 });
      default:
        return el("input", { type: "text", placeholder: this.nullable ? "none" : "", spellcheck: "false" });
    }
  }

  setPath(path) {
    this.input.name = path;
    this.input.dataset.path = path;
    if (this.vary) this.vary.setPath(path);
  }

  set(value) {
    if (value === undefined) value = this.s.default;
    const input = this.input;
    switch (this.kind) {
      case "boolean":
        input.checked = !!value;
        break;
      case "multiline":
        // Newlines are shown as escapes, so that "\n\n" stays visible and editable.
        input.value = value == null ? "" : JSON.stringify(value).slice(1, -1).replace(/\\"/g, '"');
        break;
      case "numlist":
      case "strlist":
        input.value = Array.isArray(value) ? value.join(", ") : value == null ? "" : String(value);
        break;
      default:
        input.value = value == null ? "" : String(value);
    }
  }

  get() {
    const raw = this.input.value;
    switch (this.kind) {
      case "boolean":
        return this.input.checked;
      case "integer":
      case "number": {
        if (this.input.validity && this.input.validity.badInput) return "not a number"; // the server names it
        if (raw.trim() === "") return this.nullable ? null : undefined;
        const n = Number(raw);
        return Number.isFinite(n) ? n : raw;
      }
      case "numlist":
      case "strlist": {
        const items = raw
          .split(",")
          .map((x) => x.trim())
          .filter((x) => x !== "");
        if (!items.length && this.nullable) return null;
        if (this.kind === "strlist") return items;
        return items.map((x) => (Number.isFinite(Number(x)) ? Number(x) : x));
      }
      case "multiline":
        try {
          return JSON.parse(`"${raw.replace(/"/g, '\\"')}"`);
        } catch {
          return raw;
        }
      case "enum":
        return raw === "" && this.nullable ? null : raw;
      default:
        return raw === "" && this.nullable ? null : raw;
    }
  }

  slot() {
    return this.errorSlot;
  }

  clearErrors() {
    this.errorSlot.clear();
  }
}

/** An object: its properties as fields. Unknown keys from set() are kept and sent, so the server names them. */
class ObjectWidget {
  constructor(schema, { skip = [] } = {}) {
    this.s = resolve(schema);
    this.fields = new Map();
    this.extras = {};
    this.error = el("div", { className: "error-msg", role: "alert" });
    this.extrasNote = el("div", { className: "extras-note" });
    this.el = el("div", { className: "object" }, this.error, this.extrasNote);
    this.errorSlot = new Slot(this.el, this.error);
    for (const [name, prop] of Object.entries(this.s.properties || {})) {
      if (skip.includes(name)) continue;
      const widget = makeWidget(name, prop);
      this.fields.set(name, widget);
      this.el.appendChild(widget.el);
    }
  }

  setPath(path) {
    this.path = path;
    for (const [name, widget] of this.fields) widget.setPath(path ? `${path}.${name}` : name);
  }

  set(value) {
    const v = value && typeof value === "object" ? value : {};
    for (const [name, widget] of this.fields) widget.set(v[name]);
    this.extras = Object.fromEntries(Object.entries(v).filter(([k]) => !this.fields.has(k) && k !== "type"));
    const unknown = Object.keys(this.extras);
    this.extrasNote.textContent = unknown.length ? `Not in the schema, sent as loaded (the server will name them): ${unknown.join(", ")}` : "";
  }

  get() {
    const out = { ...this.extras };
    for (const [name, widget] of this.fields) {
      const value = widget.get();
      if (value !== undefined) out[name] = value;
    }
    return out;
  }

  slot(parts) {
    if (parts.length && this.fields.has(parts[0])) return this.fields.get(parts[0]).slot(parts.slice(1));
    return this.errorSlot;
  }

  clearErrors() {
    this.errorSlot.clear();
    for (const widget of this.fields.values()) widget.clearErrors();
  }
}

/** One item of a discriminated union list: a type selector that swaps the fields below it. */
class UnionItem {
  constructor(list, mapping, value) {
    this.list = list;
    this.mapping = mapping;
    this.typeSelect = el(
      "select",
      { "aria-label": "objective type" },
      Object.keys(mapping).map((t) => el("option", { value: t }, t)),
    );
    this.typeSelect.addEventListener("change", () => this.changeType(this.typeSelect.value));
    this.removeButton = el("button", { type: "button", className: "btn small danger", onclick: () => list.remove(this) }, "Remove");
    this.title = el("strong");
    this.typeError = el("div", { className: "error-msg", role: "alert" });
    this.body = el("div");
    this.el = el(
      "div",
      { className: "objective-item" },
      el(
        "div",
        { className: "item-head" },
        this.title,
        el("label", { className: "inline muted small" }, "type", this.typeSelect),
        el("span", { className: "spacer" }),
        this.removeButton,
      ),
      this.typeError,
      this.body,
    );
    this.typeSlot = new Slot(this.el, this.typeError);
    this.set(value);
  }

  build(type) {
    this.type = type;
    this.typeSelect.value = type;
    this.inner = new ObjectWidget({ $ref: this.mapping[type] }, { skip: ["type"] });
    setChildren(this.body, this.inner.el);
    if (this.path !== undefined) this.setPath(this.path);
    onVaryChange(); // a varied field of the old type is gone
  }

  changeType(type) {
    const keep = this.inner ? this.inner.get() : {};
    this.build(type);
    const common = Object.fromEntries(Object.entries(keep).filter(([k]) => this.inner.fields.has(k)));
    this.inner.set(common);
  }

  set(value) {
    const v = value && typeof value === "object" ? value : {};
    const type = this.mapping[v.type] ? v.type : Object.keys(this.mapping)[0];
    this.build(type);
    this.inner.set(v);
    if (v.type !== undefined && !this.mapping[v.type]) this.inner.extras.type = v.type; // let the server name it
  }

  get() {
    return { type: this.type, ...this.inner.get() };
  }

  setPath(path) {
    this.path = path;
    this.typeSelect.name = `${path}.type`;
    this.typeSelect.dataset.path = `${path}.type`;
    this.title.textContent = `Objective ${Number(path.split(".").pop()) + 1}`;
    this.inner.setPath(path);
  }

  slot(parts) {
    if (parts[0] === "type") return this.typeSlot;
    if (!parts.length) return this.typeSlot;
    return this.inner.slot(parts);
  }

  clearErrors() {
    this.typeSlot.clear();
    this.inner.clearErrors();
  }
}

/** A list of discriminated-union items (the objectives): add/remove, each with its own type. */
class UnionListWidget {
  constructor(name, schema) {
    this.s = resolve(schema);
    const items = this.s.items || {};
    this.mapping = (items.discriminator && items.discriminator.mapping) || {};
    this.minItems = this.s.minItems ?? 0;
    this.maxItems = this.s.maxItems ?? Infinity;
    this.items = [];
    this.error = el("div", { className: "error-msg", role: "alert" });
    this.container = el("div", { className: "union-items" });
    this.addType = el(
      "select",
      { "aria-label": "type of the new objective" },
      Object.keys(this.mapping).map((t) => el("option", { value: t }, t)),
    );
    this.addButton = el(
      "button",
      { type: "button", className: "btn small", id: "add-objective", onclick: () => this.add({ type: this.addType.value, name: this.freeName(this.addType.value) }) },
      "Add objective",
    );
    const help = [this.s.description, `${this.minItems} to ${this.maxItems} items; each needs a unique name.`].filter(Boolean).join(" ");
    this.el = el(
      "div",
      { className: "union-list" },
      el("div", { className: "help muted small" }, help),
      this.error,
      this.container,
      el("div", { className: "row" }, this.addType, this.addButton),
    );
    this.errorSlot = new Slot(this.el, this.error);
  }

  freeName(type) {
    const taken = new Set(this.items.map((item) => item.inner.fields.get("name")?.get()));
    const base = type.replace(/[^a-z0-9_]/g, "_");
    if (!taken.has(base)) return base;
    for (let i = 2; ; i++) if (!taken.has(`${base}_${i}`)) return `${base}_${i}`;
  }

  add(value) {
    const item = new UnionItem(this, this.mapping, value);
    this.items.push(item);
    this.container.appendChild(item.el);
    this.renumber();
    return item;
  }

  remove(item) {
    this.items = this.items.filter((x) => x !== item);
    item.el.remove();
    this.renumber();
  }

  renumber() {
    this.items.forEach((item, i) => item.setPath(`${this.path}.${i}`));
    for (const item of this.items) item.removeButton.disabled = this.items.length <= this.minItems;
    this.addButton.disabled = this.items.length >= this.maxItems;
  }

  setPath(path) {
    this.path = path;
    this.renumber();
  }

  set(value) {
    for (const item of this.items) item.el.remove();
    this.items = [];
    for (const v of Array.isArray(value) ? value : []) this.add(v);
    this.renumber();
  }

  get() {
    return this.items.map((item) => item.get());
  }

  slot(parts) {
    const index = Number(parts[0]);
    if (parts.length && Number.isInteger(index) && this.items[index]) return this.items[index].slot(parts.slice(1));
    return this.errorSlot;
  }

  clearErrors() {
    this.errorSlot.clear();
    for (const item of this.items) item.clearErrors();
  }
}

function makeWidget(name, schema) {
  const { schema: s } = unwrap(schema);
  if (s.type === "object" && s.properties) return new ObjectWidget(s);
  if (s.type === "array" && s.items && (s.items.discriminator || s.items.oneOf)) return new UnionListWidget(name, s);
  return new ScalarWidget(name, schema);
}

function section(key, title, content, description) {
  return el(
    "details",
    { className: "section", open: OPEN_SECTIONS.has(key), dataset: { section: key } },
    el("summary", {}, title),
    el("div", { className: "section-body" }, description ? el("div", { className: "muted small" }, description) : null, content),
  );
}

/** The whole RunConfig: one collapsible section per sub-model, top-level scalars in the "Run" section. */
class ConfigForm {
  constructor(schema, container) {
    this.root = new ObjectWidget({ type: "object", properties: {} });
    this.root.s = schema;
    const properties = schema.properties || {};
    const names = [...SECTION_ORDER.filter((n) => n in properties), ...Object.keys(properties).filter((n) => !SECTION_ORDER.includes(n))];
    this.nameInput = el("input", { type: "text", name: "name", maxlength: 200, placeholder: "objectives and time, e.g. brevity vs coverage, 12-04 14:31", autocomplete: "off" });
    const nameRow = fieldRow(
      "name",
      { title: "Run name", description: "Shown in the runs list and on the run page; left empty, the run is named after its objectives and the time." },
      this.nameInput,
      false,
    );
    this.nameSlot = nameRow.slot;
    this.tagsInput = el("input", { type: "text", name: "tags", maxlength: 600, placeholder: "sweep, lr-high", autocomplete: "off" });
    const tagsRow = fieldRow("tags", { title: "Tags", description: "Separated by commas: to find the run in the runs list. Editable on the run page." }, this.tagsInput, false);
    this.noteInput = el("textarea", { name: "note", maxlength: 4000, rows: 2 });
    const noteRow = fieldRow("note", { title: "Note", description: "Free text about the run. Editable on the run page." }, this.noteInput, false);
    this.labelSlots = { tags: tagsRow.slot, note: noteRow.slot };
    const runBody = el("div", {}, nameRow.row, tagsRow.row, noteRow.row, this.experimentFields());
    const sections = [];
    for (const name of names) {
      const widget = makeWidget(name, properties[name]);
      this.root.fields.set(name, widget);
      const prop = resolve(properties[name]);
      if (widget instanceof ScalarWidget) runBody.appendChild(widget.el);
      else sections.push(section(name, prop.title && !/Config$/.test(prop.title) ? prop.title : titleCase(name), widget.el, prop.description));
    }
    this.root.setPath("");
    this.root.el.replaceChildren(this.root.error, this.root.extrasNote);
    setChildren(container, section("run", "Run", [this.root.el, runBody]), sections);
  }

  /** What only an experiment takes (shown once a field is varied): its held-out evaluation and its baseline. */
  experimentFields() {
    const text = (name, maxlength, placeholder) => el("input", { type: "text", name, maxlength, placeholder, autocomplete: "off" });
    this.heldOut = {
      prompts: text("held_out.prompts", 500, "e.g. builtin:eval, or a .txt / .jsonl file under the uploads folder"),
      samples_per_weight: el("input", { type: "number", name: "held_out.samples_per_weight", min: 1, max: 1000, step: 1, placeholder: "each run's eval.samples_per_weight" }),
      max_prompts: el("input", { type: "number", name: "held_out.max_prompts", min: 1, max: 10000, step: 1, value: "200" }),
    };
    this.baselineInput = text("baseline", 200, "the first variant");
    const rows = [
      fieldRow(
        "held_out.prompts",
        {
          title: "Held-out prompts",
          description:
            "Every run is evaluated once more after its last iteration on these prompts, which it never trained on; the experiment page compares the variants there. Empty: no held-out evaluation.",
        },
        this.heldOut.prompts,
        true,
      ),
      fieldRow("held_out.samples_per_weight", { title: "Held-out responses per prompt and weight" }, this.heldOut.samples_per_weight, true),
      fieldRow("held_out.max_prompts", { title: "Held-out prompts at most", description: "The file's first ones." }, this.heldOut.max_prompts, false),
      fieldRow(
        "baseline",
        { title: "Baseline", description: "The variant the others are compared against, by name (e.g. static-base_loss=sft); the experiment page can switch it." },
        this.baselineInput,
        true,
      ),
    ];
    this.experimentSlots = { held_out: rows.slice(0, 3).map((r) => r.slot), baseline: rows[3].slot };
    this.experimentRows = el("div", { className: "hidden", id: "experiment-fields" }, el("h3", {}, "Experiment"), ...rows.map((r) => r.row));
    return this.experimentRows;
  }

  /** The experiment's own fields that are filled in: held_out (if prompts are named) and baseline. */
  experimentSettings() {
    const found = {};
    const prompts = this.heldOut.prompts.value.trim();
    if (prompts) {
      found.held_out = { prompts, max_prompts: Number(this.heldOut.max_prompts.value || 200) };
      if (this.heldOut.samples_per_weight.value) found.held_out.samples_per_weight = Number(this.heldOut.samples_per_weight.value);
    }
    const baseline = this.baselineInput.value.trim();
    if (baseline) found.baseline = baseline;
    return found;
  }

  set(config) {
    this.root.set(config);
  }

  get() {
    return this.root.get();
  }

  clearErrors() {
    this.root.clearErrors();
    this.nameSlot.clear();
    for (const slot of [...this.experimentSlots.held_out, this.experimentSlots.baseline]) slot.clear();
  }
}

function titleCase(name) {
  return (
    { lora: "LoRA", eval: "Evaluation", model: "Model", data: "Data", algorithm: "Algorithm", checkpoint: "Checkpoints", objectives: "Objectives" }[name] ||
    name.charAt(0).toUpperCase() + name.slice(1)
  );
}

function isPlainObject(x) {
  return x !== null && typeof x === "object" && !Array.isArray(x);
}

/** Defaults overlaid with a (partial) config; lists are replaced, not merged. */
function overlay(base, top) {
  if (!isPlainObject(base) || !isPlainObject(top)) return top === undefined ? base : top;
  const out = { ...base };
  for (const [key, value] of Object.entries(top)) out[key] = overlay(base[key], value);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------

const formEl = document.getElementById("run-form");
const formError = document.getElementById("form-error");
const submitButton = document.getElementById("submit-button");
const resetButton = document.getElementById("reset-button");
const submitStatus = document.getElementById("submit-status");
const loadError = document.getElementById("load-error");
const loadStatus = document.getElementById("load-status");
const configText = document.getElementById("config-text");
let form = null;
let defaults = {};

/** The form path a 422's loc names: a run's config fields, or an experiment's base, vary, seeds and algorithms. */
function formPath(loc) {
  if (loc[1] === "config") return loc.slice(2);
  if (loc[1] !== "experiment") return null;
  if (loc[2] === "base" || loc[2] === "vary") return loc.slice(3);
  const setBy = Object.entries(EXPERIMENT_SET_BY).find(([, field]) => field === loc[2]);
  return setBy ? setBy[0].split(".") : null;
}

/** Show FastAPI's 422 detail next to the fields it names. `what`: "run" or "experiment". */
function showErrors(detail, what) {
  const general = [];
  let first = null;
  for (const item of Array.isArray(detail) ? detail : [{ loc: [], msg: String(detail) }]) {
    const loc = (item.loc || []).map(String);
    const path = loc[0] === "body" ? formPath(loc) : null;
    let slot = null;
    if (path) {
      slot = path.length && !(path.length === 1 && path[0] === "config") ? form.root.slot(path) : null;
      if (slot === form.root.errorSlot) slot = null;
      if (slot) {
        // Shown at a field's own row as is; at an enclosing section (unknown key, whole-section rule) with its path.
        const dotted = path.join(".");
        const exact = slot.container.querySelector(`[data-path="${CSS.escape(dotted)}"]`);
        slot.show(exact ? item.msg : `${dotted}: ${item.msg}`);
      } else general.push(`${loc.slice(2).join(".") || "config"}: ${item.msg}`);
    } else if (loc[0] === "body" && loc[1] === "name") {
      slot = form.nameSlot;
      slot.show(item.msg);
    } else if (loc[0] === "body" && loc[1] === "experiment" && (loc[2] === "held_out" || loc[2] === "baseline")) {
      const held = ["prompts", "samples_per_weight", "max_prompts"].indexOf(loc[3]);
      slot = loc[2] === "baseline" ? form.experimentSlots.baseline : form.experimentSlots.held_out[Math.max(held, 0)];
      slot.show(loc[2] === "held_out" && held < 0 ? `${loc.slice(3).join(".")}: ${item.msg}` : item.msg);
    } else if (loc[0] === "body" && (loc[1] === "tags" || loc[1] === "note")) {
      slot = form.labelSlots[loc[1]];
      slot.show(loc.length > 2 ? `tag ${Number(loc[2]) + 1}: ${item.msg}` : item.msg);
    } else {
      general.push(`${loc.slice(1).join(".") || "request"}: ${item.msg}`);
    }
    if (slot && !first) first = slot.container;
  }
  const count = Array.isArray(detail) ? detail.length : 1;
  const problems = `${count} problem${count === 1 ? "" : "s"}${general.length ? ": " + general.join("; ") : " (marked below)"}`;
  formError.textContent = `The ${what === "experiment" ? "experiment was not launched" : "run was not started"}: ${problems}.`;
  (first || formError).scrollIntoView({ behavior: "smooth", block: "center" });
}

/** The experiment the varied fields ask for (seeds and algorithms default to the form's one), or null. */
function experimentOf(config) {
  const active = [...varied].filter((v) => v.widget.el.isConnected);
  if (!active.length) return null;
  const experiment = { base: config, vary: {} };
  for (const control of active) {
    const setBy = control.setBy();
    if (setBy) experiment[setBy] = control.value();
    else experiment.vary[control.path] = control.value();
  }
  experiment.seeds ??= [config.seed ?? defaults.seed];
  experiment.algorithms ??= [(config.algorithm || {}).name ?? defaults.algorithm.name];
  return { ...experiment, ...form.experimentSettings() };
}

function updateSubmit() {
  const experiment = [...varied].some((v) => v.widget.el.isConnected);
  submitButton.textContent = experiment ? "Launch experiment" : "Start run";
  formEl.dataset.experiment = experiment ? "1" : "";
  form.experimentRows.classList.toggle("hidden", !experiment);
}

/** A run left unnamed is named after its objectives and the time: "brevity vs coverage, 12-04 14:31". */
const RUN_NAME_MAX = 200; // app/schemas.py: RunCreate.name, ExperimentCreate.name
const EXPERIMENT_NAME_MAX = 120;

function defaultName(config, max) {
  const names = (config.objectives || []).map((o) => o.name).filter(Boolean);
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  const when = `${pad(now.getMonth() + 1)}-${pad(now.getDate())} ${pad(now.getHours())}:${pad(now.getMinutes())}`;
  return `${names.join(" vs ") || "run"}, ${when}`.slice(0, max);
}

async function submit(event) {
  event.preventDefault();
  form.clearErrors();
  formError.textContent = "";
  const config = form.get();
  const experiment = experimentOf(config);
  const name = form.nameInput.value.trim() || defaultName(config, experiment ? EXPERIMENT_NAME_MAX : RUN_NAME_MAX);
  submitButton.disabled = true;
  submitStatus.textContent = experiment ? "Launching…" : "Starting…";
  try {
    if (experiment) {
      const body = { name, experiment, tags: parseTags(form.tagsInput.value), note: form.noteInput.value };
      const created = await api("/api/experiments", { method: "POST", body });
      submitStatus.textContent = `Experiment #${created.id} launched: ${created.runs} runs.`;
      window.location.href = `/experiments/${created.id}`;
    } else {
      const body = { name, config, tags: parseTags(form.tagsInput.value), note: form.noteInput.value };
      const run = await api("/api/runs", { method: "POST", body });
      submitStatus.textContent = `Run #${run.id} created.`;
      window.location.href = `/runs/${run.id}`;
    }
    return;
  } catch (error) {
    submitStatus.textContent = "";
    const what = experiment ? "experiment" : "run";
    if (error instanceof ApiError && error.status === 422) showErrors(error.detail, what);
    else formError.textContent = `The ${experiment ? "experiment was not launched" : "run was not started"}: ${errorText(error)}`;
  }
  submitButton.disabled = false;
}

async function loadText() {
  loadError.textContent = "";
  loadStatus.textContent = "";
  const text = configText.value;
  if (!text.trim()) {
    loadError.textContent = "Paste a config or choose a file first.";
    return;
  }
  let config;
  try {
    config = JSON.parse(text);
    if (!isPlainObject(config)) {
      loadError.textContent = "The top level of the config must be an object.";
      return;
    }
    config = overlay(defaults, config);
  } catch {
    // Not JSON: the server parses YAML and validates it.
    try {
      config = await api("/api/config/parse", { method: "POST", body: { text } });
    } catch (error) {
      if (error instanceof ApiError && Array.isArray(error.detail)) {
        setChildren(
          loadError,
          el("div", {}, "Not loaded:"),
          error.detail.map((d) => {
            const loc = (d.loc || []).map(String);
            const where = loc[1] === "config" ? loc.slice(2).join(".") : "text";
            return el("div", {}, el("code", {}, where), ": ", d.msg);
          }),
        );
      } else {
        loadError.textContent = `Not loaded: ${errorText(error)}`;
      }
      return;
    }
  }
  form.clearErrors();
  formError.textContent = "";
  form.set(config);
  loadStatus.textContent = "Loaded into the form. Review it, then start the run.";
}

async function main() {
  const cloneId = formEl.dataset.clone;
  let schema;
  try {
    [schema, defaults] = await Promise.all([api("/api/config/schema"), api("/api/config/defaults")]);
  } catch (error) {
    formError.textContent = `Could not load the configuration schema: ${errorText(error)}`;
    return;
  }
  defs = schema.$defs || {};
  form = new ConfigForm(schema, document.getElementById("form-sections"));
  form.set(defaults);
  if (cloneId) {
    try {
      const run = await api(`/api/runs/${encodeURIComponent(cloneId)}`);
      form.set(overlay(defaults, run.config));
      form.nameInput.value = `${run.name} (copy)`.slice(0, 200);
      form.tagsInput.value = (run.tags || []).join(", ");
    } catch (error) {
      formError.textContent = `Could not copy run ${cloneId}: ${errorText(error)}. The form shows the defaults.`;
    }
  }
  onVaryChange = updateSubmit;
  formEl.addEventListener("submit", submit);
  resetButton.addEventListener("click", () => {
    form.clearErrors();
    formError.textContent = "";
    for (const control of [...varied]) control.setOn(false);
    form.set(defaults);
  });
  submitButton.disabled = false;
  resetButton.disabled = false;
  formEl.dataset.ready = "1";
}

for (const [id, open] of [
  ["expand-all", true],
  ["collapse-all", false],
]) {
  document.getElementById(id).addEventListener("click", () => {
    for (const details of document.querySelectorAll("details.section")) details.open = open;
  });
}
document.getElementById("load-config").addEventListener("click", () => loadText());
document.getElementById("export-config").addEventListener("click", () => {
  if (form) configText.value = JSON.stringify(form.get(), null, 2);
});
document.getElementById("config-file").addEventListener("change", async (event) => {
  const file = event.target.files && event.target.files[0];
  if (!file) return;
  configText.value = await file.text();
  await loadText();
});

main();
