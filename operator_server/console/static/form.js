// Answer forms: the inputs drawn from an ask's answer_schema (the flat subset MCP
// elicitation uses: string, number, integer, boolean or a string enum per field).
//
// Inputs by type, enums as choices, required fields marked; read() returns the
// answer typed as the schema says, or the first field a person must fix.

import { h } from "./dom.js";

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
  const label = prop.title || name;
  const labelNode = h("label", { for: id, text: label },
    isRequired ? h("span", { class: "required", "aria-hidden": "true", text: " *" }) : null);
  const hint = prop.description ? h("small", { class: "hint", id: `${id}-hint`, text: prop.description }) : null;
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
  } else if (prop.type === "boolean") {
    input = h("input", { ...common, type: "checkbox", required: false });
    input.checked = prop.default === true;
    read = () => ({ value: input.checked });
  } else if (prop.type === "number" || prop.type === "integer") {
    input = h("input", { ...common, type: "number", step: prop.type === "integer" ? "1" : "any",
      min: prop.minimum, max: prop.maximum });
    if (prop.default !== undefined) input.value = String(prop.default);
    read = () => choose(input.value.trim(), isRequired, label, (v) => {
      const n = Number(v);
      if (!Number.isFinite(n) || (prop.type === "integer" && !Number.isInteger(n))) {
        throw new Error(`${label}: type ${prop.type === "integer" ? "a whole number" : "a number"}`);
      }
      return n;
    });
  } else {
    input = h("input", { ...common, type: "text" });
    if (prop.default !== undefined) input.value = prop.default;
    read = () => choose(input.value, isRequired, label, (v) => v);
  }
  const node = prop.type === "boolean"
    ? h("p", { class: "form-field" }, input, " ", labelNode, hint)
    : h("p", { class: "form-field" }, labelNode, input, hint);
  return { name, node, read };
}

function choose(text, isRequired, label, convert) {
  if (text === "") return isRequired ? { error: `${label} is required` } : { skip: true };
  try {
    return { value: convert(text) };
  } catch (err) {
    return { error: err.message };
  }
}
