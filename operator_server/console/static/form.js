// Answer forms: the inputs drawn from an ask's answer_schema (the flat subset MCP
// elicitation uses: string, number, integer, boolean or a string enum per field).
//
// Inputs by type, enums as choices, required fields marked; read() returns the
// answer typed as the schema says, or the first field a person must fix.
// A required boolean is a Yes/No choice with nothing picked (unless the schema
// gives a default): an untouched checkbox would answer `false` for the person.
// A number's limits show under it; a field without a title is labelled with
// its key made readable.

import { h, readableKey } from "./dom.js";

export function drawForm(schema, idPrefix) {
  const required = new Set(schema.required || []);
  const fields = Object.entries(schema.properties || {}).map(([name, prop]) =>
    field(name, prop, required.has(name), `${idPrefix}-f-${name}`));
  const node = h("fieldset", { class: "answer-form" },
    schema.title ? h("legend", { text: schema.title }) : null,
    ...fields.map((f) => f.node));
  const read = () => {
    const value = {};
    for (const f of fields) {
      const got = f.read();
      if (got.error) return { error: got.error, field: f.name };
      if (got.skip) continue;
      value[f.name] = got.value;
    }
    return { value };
  };
  return { node, read };
}

function field(name, prop, isRequired, id) {
  const label = prop.title || readableKey(name);
  const mark = isRequired ? h("span", { class: "required", "aria-hidden": "true", text: " *" }) : null;
  const labelNode = h("label", { for: id, text: label }, mark);
  const hintText = [prop.description, limits(prop)].filter(Boolean).join(" · ");
  const hint = hintText ? h("small", { class: "hint", id: `${id}-hint`, text: hintText }) : null;
  const common = { id, name, required: isRequired, "aria-required": isRequired ? "true" : null,
    "aria-describedby": hint ? `${id}-hint` : null };
  let input;
  let read;
  if (prop.enum) {
    input = h("select", common,
      isRequired && prop.default === undefined ? h("option", { value: "", text: "choose…" }) : null,
      !isRequired ? h("option", { value: "", text: "(none)" }) : null,
      ...prop.enum.map((choice, i) => h("option", { value: choice, text: (prop.enumNames || [])[i] || choice })));
    if (prop.default !== undefined) input.value = prop.default;
    read = () => choose(input.value, isRequired, label, (v) => v);
  } else if (prop.type === "boolean" && isRequired) {
    const radio = (value, text) => {
      const r = h("input", { type: "radio", name: id, value, id: `${id}-${value}`, required: true });
      r.checked = prop.default === (value === "yes");
      return { r, node: h("label", { for: `${id}-${value}` }, r, text) };
    };
    const yes = radio("yes", "Yes");
    const no = radio("no", "No");
    const group = h("fieldset", { class: "choice", id, role: "radiogroup", "aria-required": "true",
      "aria-describedby": hint ? `${id}-hint` : null },
      h("legend", { text: label }, mark), yes.node, no.node);
    read = () => {
      if (!yes.r.checked && !no.r.checked) return { error: `${label}: choose Yes or No` };
      return { value: yes.r.checked };
    };
    return { name, node: h("div", { class: "form-field" }, group, hint), read };
  } else if (prop.type === "boolean") {
    input = h("input", { ...common, type: "checkbox", required: false });
    input.checked = prop.default === true;
    read = () => ({ value: input.checked });
    // The box inside its label: they sit together and either one toggles it.
    return { name, node: h("p", { class: "form-field" }, h("label", { class: "check", for: id }, input, label), hint), read };
  } else if (prop.type === "number" || prop.type === "integer") {
    input = h("input", { ...common, type: "number", step: prop.type === "integer" ? "1" : "any",
      min: prop.minimum, max: prop.maximum });
    if (prop.default !== undefined) input.value = String(prop.default);
    read = () => choose(input.value.trim(), isRequired, label, (v) => {
      const n = Number(v);
      if (!Number.isFinite(n) || (prop.type === "integer" && !Number.isInteger(n))) {
        throw new Error(`${label}: type ${prop.type === "integer" ? "a whole number" : "a number"}`);
      }
      // Checked here too: an answer the server refuses would leave the ask waiting.
      if ((prop.minimum !== undefined && n < prop.minimum) || (prop.maximum !== undefined && n > prop.maximum)) {
        throw new Error(`${label}: ${limits(prop)}`);
      }
      return n;
    });
  } else {
    input = h("input", { ...common, type: "text" });
    if (prop.default !== undefined) input.value = prop.default;
    read = () => choose(input.value, isRequired, label, (v) => v);
  }
  return { name, node: h("p", { class: "form-field" }, labelNode, input, hint), read };
}

// A number's limits, in words (the subset allows minimum and maximum only).
function limits(prop) {
  if (prop.type !== "number" && prop.type !== "integer") return "";
  const whole = prop.type === "integer" ? "a whole number" : "a number";
  const lo = prop.minimum;
  const hi = prop.maximum;
  if (lo !== undefined && hi !== undefined) return `${whole} from ${lo} to ${hi}`;
  if (lo !== undefined) return `${whole}, at least ${lo}`;
  if (hi !== undefined) return `${whole}, at most ${hi}`;
  return whole;
}

function choose(text, isRequired, label, convert) {
  if (text === "") return isRequired ? { error: `${label} is required` } : { skip: true };
  try {
    return { value: convert(text) };
  } catch (err) {
    return { error: err.message };
  }
}
