// Tasks: the list, one task's page, New task and Cancel task.
//
// Today the list is re-read (GET /v1/tasks) after the console's own actions and
// whenever an inbox frame names a task.  startTaskUpdates() is the one place to
// swap that for the live event stream (GET /v1/events) once the server has it.

import { api } from "./api.js";
import { $, clock, h, parseInput, pretty } from "./dom.js";

const MAX_ROWS = 200;
const TERMINAL = new Set(["passed", "blocked", "failed", "cancelled"]);

export class TasksView {
  constructor() {
    this.openId = null;
    this.inFlight = null;
    this.again = false;
    $("new-task").addEventListener("submit", (e) => {
      e.preventDefault();
      this.create();
    });
    $("task-filter").addEventListener("change", () => this.refresh());
    $("cancel-task").addEventListener("click", () => this.cancel());
    $("close-task").addEventListener("click", () => this.close());
  }

  // The hook for live updates.  Until the server streams task events, a change
  // is noticed only through touched(); replace the body with an event stream
  // that calls this.touched(event.task_id) per event.
  startTaskUpdates() {
    this.refresh();
  }

  touched(taskId) {
    this.refresh();
    if (taskId === this.openId) this.open(taskId);
  }

  // Coalesced: a burst of touches reads the list at most twice.
  refresh() {
    if (this.inFlight) {
      this.again = true;
      return this.inFlight;
    }
    this.inFlight = this.load().finally(() => {
      this.inFlight = null;
      if (this.again) {
        this.again = false;
        this.refresh();
      }
    });
    return this.inFlight;
  }

  async load() {
    let tasks;
    try {
      tasks = await api.tasks($("task-filter").value);
    } catch (err) {
      this.error(`Could not list tasks: ${err.message}`);
      return;
    }
    const rows = tasks.reverse().slice(0, MAX_ROWS).map((t) =>
      h("tr", { class: t.id === this.openId ? "selected" : "" },
        h("td", {}, h("button", { type: "button", class: "link", text: t.id, onclick: () => this.open(t.id) })),
        h("td", { text: t.agent }),
        h("td", {}, h("span", { class: `badge status-${t.status}`, text: t.status })),
        h("td", { text: clock(t.updated_at) })));
    $("task-rows").replaceChildren(...rows);
  }

  async create() {
    const role = $("task-role").value.trim();
    const body = { agent: $("task-agent").value.trim(), directive: parseInput($("task-directive").value) };
    if (role) body.operator = { role };
    try {
      const task = await api.createTask(body);
      this.error("");
      $("task-directive").value = "";
      await this.refresh();
      this.open(task.id);
    } catch (err) {
      this.error(`Could not create the task: ${err.message}`);
    }
  }

  async cancel() {
    if (!this.openId) return;
    try {
      await api.cancelTask(this.openId, $("cancel-reason").value.trim());
      $("cancel-reason").value = "";
      this.error("");
    } catch (err) {
      this.error(`Could not cancel: ${err.message}`);
    }
    this.touched(this.openId);
  }

  async open(id) {
    const switched = this.openId !== id;
    this.openId = id;
    if (switched) this.refresh(); // marks the row
    let task;
    try {
      task = await api.task(id);
    } catch (err) {
      this.error(`Could not read ${id}: ${err.message}`);
      return;
    }
    if (this.openId !== id) return;
    this.render(task);
  }

  close() {
    this.openId = null;
    $("task-page").hidden = true;
  }

  render(task) {
    $("task-page").hidden = false;
    $("task-page-h").textContent = `Task ${task.id}`;
    $("cancel-task").disabled = TERMINAL.has(task.status);
    const facts = [
      ["Status", h("span", { class: `badge status-${task.status}`, text: task.status })],
      ["Agent", task.agent],
      ["Kind", task.kind],
      ["Attempt", `${task.attempt} of ${task.max_attempts}`],
      ["Operator", task.operator ? pretty(task.operator) : "none (local agent)"],
      ["Result", task.result ? h("pre", { class: "code", text: pretty(task.result) }) : "—"],
      ["Error", task.error ? `${task.error.code}: ${task.error.message}` : "—"],
      ["Created", clock(task.created_at)],
      ["Updated", clock(task.updated_at)],
    ];
    $("task-summary").replaceChildren(...facts.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));
    $("task-directive-view").textContent = pretty(task.directive);
    $("task-attempts").replaceChildren(...(task.attempts || []).map((a) => this.attempt(a)));
  }

  attempt(a) {
    const served = Object.entries(a.served_by || {}).map(([face, sid]) => `${face}: ${sid}`).join(", ");
    return h("li", { class: "attempt" },
      h("p", {}, h("strong", { text: `Attempt ${a.attempt}` }), " ",
        h("span", { class: `badge status-${a.status}`, text: a.status }), " ",
        h("span", { class: "muted", text: `${clock(a.started_at)} → ${clock(a.ended_at)}` })),
      h("p", { class: "muted", text: `served by: ${served || "local agent"}` }),
      a.error ? h("p", { class: "error-text", text: `${a.error.code}: ${a.error.message}` }) : null,
      a.result ? h("pre", { class: "code", text: `result: ${pretty(a.result)}` }) : null,
      h("ol", { class: "outputs", "aria-label": `Outputs of attempt ${a.attempt}` },
        ...(a.outputs || []).map((o) =>
          h("li", {},
            h("span", { class: "muted", text: `${clock(o.at)} ${o.kind} from ${o.source}${o.ok === false ? " (not ok)" : ""}` }),
            h("pre", { class: "code", text: pretty(o.value) })))));
  }

  error(text) {
    $("tasks-error").textContent = text;
  }
}
