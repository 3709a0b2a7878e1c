// Building DOM from server data, safely: every string becomes a text node.
// Nothing in the console parses data as markup, so a directive holding markup shows
// as text and runs nothing.

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function $(id) {
  return document.getElementById(id);
}

// JSON shown to a person: objects indented; a string that is JSON, too.
export function pretty(value) {
  if (typeof value === "string") {
    const trimmed = value.trim();
    if (trimmed.startsWith("{") || trimmed.startsWith("[")) {
      try {
        return JSON.stringify(JSON.parse(trimmed), null, 2);
      } catch {
        return value;
      }
    }
    return value;
  }
  return JSON.stringify(value, null, 2);
}

// What a person typed: JSON when it parses, the text otherwise.
export function parseInput(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

export function since(ms) {
  const s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function clock(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleTimeString();
}

// Ids as a person reads them: long ids shortened to the part that tells them
// apart (a task id's head is its creation time, shared by tasks made together,
// so its tail; a session id's head is random), the whole id on hover.
export function shortId(id) {
  const text = String(id || "");
  const task = /^t-[0-9a-f]{12}([0-9a-f]{8,})$/.exec(text);
  if (task) return `t-…${task[1].slice(-8)}`;
  const other = /^([a-z]+-)([0-9a-f-]{12,})$/.exec(text);
  if (other) return `${other[1]}${other[2].slice(0, 8)}…`;
  return text;
}

// A short id that copies the whole id in one click (full id on hover).
export function idChip(id, { label = "" } = {}) {
  const chip = h("button", {
    type: "button",
    class: "id",
    title: `${id} (click to copy)`,
    "aria-label": `Copy ${label ? `${label} ` : ""}${id}`,
    "data-id": id,
    text: shortId(id),
  });
  chip.addEventListener("click", () => copy(id, chip));
  return chip;
}

async function copy(text, chip) {
  try {
    await navigator.clipboard.writeText(text);
    chip.dataset.copied = "true";
    chip.classList.add("copied");
    setTimeout(() => chip.classList.remove("copied"), 1200);
  } catch {
    // No clipboard (an insecure origin): select the text so Ctrl+C takes it.
    const range = document.createRange();
    chip.textContent = text;
    range.selectNodeContents(chip);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
  }
}

// A schema key as a label when the field has no title: "max_retries" and
// "maxRetries" read "Max retries".
export function readableKey(key) {
  const words = String(key)
    .replace(/([a-z0-9])([A-Z])/g, "$1 $2")
    .replace(/[_\-.]+/g, " ")
    .trim()
    .toLowerCase();
  return words ? words[0].toUpperCase() + words.slice(1) : String(key);
}
