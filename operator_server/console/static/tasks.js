// Tasks: the live list, one task's page with its event timeline, New task and
// Cancel task.
//
// The list is read once (GET /v1/tasks, which says where the event stream takes
// over), then kept current by the event stream GET /v1/events: each event
// carries its task's agent and status, so no event costs a request.  The list
// is read again only when the person changes the status filter.  An open task
// follows its own stream (GET /v1/tasks/{id}/events), which ends at its final
// status; each of its events re-reads that one task for the page.
//
// A principal without events:read gets the list and pages without their
// streams (read once; the filter reads the list again), and is told so.
//
// Ids show short (the whole id on hover, a click copies it), and the timeline
// and attempts name operators as people: "approval asked of Ada".  For a
// principal holding admin, each decided line also names the principal that
// decided it, from the task's audit trail ("approved by key:reviewer";
// decided.js).

import { api } from "./api.js";
import { DecidedBy, NOT_SHOWN } from "./decided.js";
import { $, clock, h, idChip, parseInput, pretty, shortId } from "./dom.js";
import { EventReader } from "./events.js";
import { names } from "./names.js";

const MAX_ROWS = 200;
const MAX_KNOWN = 2000;
const TERMINAL = new Set(["passed", "blocked", "failed", "cancelled", "halted"]);
const LIVE_TEXT = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  ended: "ended",
  failed: "stopped",
};
// What each face of an operator is asked for, in a person's words.
const ASKED = {
  spawn_hook: (who) => `approval asked of ${who}`,
  senior_bridge: (who) => `question asked of ${who}`,
  backend: (who) => `work handed to ${who}`,
};
const REPLIED = {
  spawn_hook: (who) => `${who} answered the approval`,
  senior_bridge: (who) => `${who} answered the question`,
  backend: (who) => `${who} handed the work back`,
};
// A request that moved on (escalation): "approval moved from l1 to l2 (no reply in 10 min)".
const REQUEST_NOUN = { spawn_hook: "approval", senior_bridge: "question", backend: "work" };
const movedWords = ({ face, from, to, reason, after_s: after }) =>
  `${REQUEST_NOUN[face] || "request"} moved from ${from} to ${to}` +
  (reason === "escalated" ? ` (no reply in ${duration(after)})` : ` (${reason})`);
const duration = (s) => (s >= 3600 ? `${+(s / 3600).toFixed(1)} h` : s >= 60 ? `${+(s / 60).toFixed(1)} min` : `${s} s`);
const NOT_LIVE = "not live: events need the events:read scope";
const FACE_WORK = { spawn_hook: "approvals", senior_bridge: "questions", backend: "work" };
// An output event: where the attempt's result came from.
const OUTPUT_WORDS = {
  "final/worker": "result posted by the worker",
  "final/ack": "result sent with the operator's acknowledgement",
  "final/halt": "halted by the operator",
  "final/agent": "result from the local agent",
  "final/senior": "result decided by the senior's answer",
  "output/ack": "operator's acknowledgement recorded (the worker's result stands)",
};

export class TasksView {
  // onEvent: every event of the list's stream, for other views that follow it.
  constructor({ onEvent = () => {} } = {}) {
    this.onEvent = onEvent;
    this.openId = null;
    this.rows = new Map(); // task id -> {id, agent, status, updated_at}, oldest first
    this.rowNodes = new Map(); // task id -> its <tr>
    this.generation = 0;
    this.feed = null; // the list's event stream
    this.timeline = null; // the open task's event stream
    this.follows = true; // may read event streams (events:read)
    this.decides = false; // may read who decided (admin: the audit trail)
    this.decided = new DecidedBy({
      onRead: () => {
        $("timeline-decided").textContent = ""; // a failed read before is mended
        this.labelDecisions();
      },
      onError: (text) => {
        $("timeline-decided").textContent = text;
      },
    });
    this.drawing = false;
    this.reading = null;
    this.readAgain = false;
    $("new-task").addEventListener("submit", (e) => {
      e.preventDefault();
      this.create();
    });
    $("task-filter").addEventListener("change", () => this.reload());
    $("cancel-task").addEventListener("click", () => this.cancel());
    $("close-task").addEventListener("click", () => this.close());
  }

  // Read the list once, then follow every task's events (when `follows`);
  // `decides`: the task page names who decided (a principal holding admin).
  startTaskUpdates({ follows = true, decides = false } = {}) {
    this.stopTaskUpdates();
    this.follows = follows;
    this.decides = decides;
    this.reload();
  }

  stopTaskUpdates() {
    this.generation++;
    if (this.feed) this.feed.stop();
    this.feed = null;
    this.close();
    this.rows.clear();
    this.rowNodes.clear();
    $("task-rows").replaceChildren();
  }

  // The inbox saw a frame about this task: the open page may have moved on.
  touched(taskId) {
    if (taskId === this.openId) this.reread();
  }

  async reload() {
    const generation = ++this.generation;
    const filter = $("task-filter").value;
    let listed;
    try {
      listed = await api.tasks(filter);
    } catch (err) {
      this.error(`Could not list tasks: ${err.message}`);
      return;
    }
    if (generation !== this.generation) return; // a newer read (or sign-out) won
    this.rows = new Map(listed.tasks.map((t) => [t.id, { id: t.id, agent: t.agent, status: t.status, updated_at: t.updated_at }]));
    this.draw();
    // A running stream needs no restart: the events it still delivers are older
    // than this read, and each carries its task's status once it applies, so
    // the last one per task leaves the row as it is now.
    if (!this.follows) {
      $("tasks-live").textContent = NOT_LIVE;
      $("tasks-live").className = "live";
    } else if (!this.feed) {
      this.feed = new EventReader("/v1/events", {
        bearer: api.apiToken,
        lastId: listed.lastEventId,
        onEvent: (event) => {
          this.apply(event.data);
          this.onEvent(event);
        },
        onState: (state, why) => {
          $("tasks-live").textContent = why ? `${LIVE_TEXT[state]}: ${why}` : LIVE_TEXT[state];
          $("tasks-live").className = `live live-${state}`;
        },
      }).start();
    }
  }

  apply(event) {
    const filter = $("task-filter").value;
    const known = this.rows.get(event.task_id);
    if (filter && event.status !== filter) {
      if (known) this.rows.delete(event.task_id); // it left the filter
    } else if (known) {
      known.status = event.status;
      known.updated_at = event.at;
    } else {
      this.rows.set(event.task_id, { id: event.task_id, agent: event.agent, status: event.status, updated_at: event.at });
      if (this.rows.size > MAX_KNOWN) this.rows.delete(this.rows.keys().next().value);
    }
    this.draw();
  }

  // Coalesced: a burst of events redraws the table once.  Rows are kept per
  // task and updated in place, so a row being read, clicked or focused (by
  // keyboard) stays the same element while events arrive.
  draw() {
    if (this.drawing) return;
    this.drawing = true;
    setTimeout(() => {
      this.drawing = false;
      const body = $("task-rows");
      const newest = [...this.rows.values()].slice(-MAX_ROWS).reverse();
      const keep = new Set();
      newest.forEach((t, i) => {
        const row = this.rowNode(t);
        keep.add(row);
        if (body.children[i] !== row) body.insertBefore(row, body.children[i] || null);
      });
      for (const row of [...body.children]) if (!keep.has(row)) row.remove();
      for (const [id, row] of this.rowNodes) if (!keep.has(row)) this.rowNodes.delete(id);
    }, 0);
  }

  rowNode(t) {
    let row = this.rowNodes.get(t.id);
    if (!row) {
      row = h("tr", { "data-task-id": t.id },
        h("td", {}, h("button", { type: "button", class: "link", text: shortId(t.id), title: t.id, onclick: () => this.open(t.id) })),
        h("td", { text: t.agent }),
        h("td", {}, h("span", { class: "badge" })),
        h("td", { class: "updated" }));
      this.rowNodes.set(t.id, row);
    }
    row.className = t.id === this.openId ? "selected" : "";
    const badge = row.querySelector(".badge");
    badge.className = `badge status-${t.status}`;
    badge.textContent = t.status;
    row.querySelector(".updated").textContent = clock(t.updated_at);
    return row;
  }

  async create() {
    const role = $("task-role").value.trim();
    const body = { agent: $("task-agent").value.trim(), directive: parseInput($("task-directive").value) };
    if (role) body.operator = { role };
    try {
      const task = await api.createTask(body);
      this.error("");
      $("task-directive").value = "";
      this.open(task.id); // its row comes with its `created` event
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
    this.reread();
  }

  open(id) {
    if (this.openId !== id) {
      this.openId = id;
      this.draw(); // marks the row
      this.follow(id);
    }
    return this.reread();
  }

  // The open task's timeline: its stored events, then live ones until its end.
  follow(id) {
    if (this.timeline) this.timeline.stop();
    $("task-timeline").replaceChildren();
    $("timeline-live").textContent = "";
    $("timeline-decided").textContent = this.decides ? "" : NOT_SHOWN;
    if (this.decides) this.decided.follow(id);
    if (!this.follows) {
      $("timeline-live").textContent = NOT_LIVE;
      return;
    }
    this.timeline = new EventReader(`/v1/tasks/${encodeURIComponent(id)}/events`, {
      bearer: api.apiToken,
      onEvent: (event) => {
        $("task-timeline").append(this.timelineItem(event));
        this.reread();
        if (this.decides) this.decided.heard(event.type);
      },
      onState: (state, why) => {
        $("timeline-live").textContent = why ? `${LIVE_TEXT[state]}: ${why}` : LIVE_TEXT[state];
      },
      endsWith: (event) => event.type === "status" && TERMINAL.has(event.data.status),
    }).start();
  }

  timelineItem({ id, type, data }) {
    const who = names.of(data.sid);
    const parts = {
      created: () => "created",
      status: () => `status → ${data.status}`,
      attempt_started: () => `attempt ${data.attempt} started`,
      attempt_ended: () => `attempt ${data.attempt} ended: ${data.outcome}${data.error_code ? ` (${data.error_code})` : ""}`,
      output: () => outputWords(data),
      request: () => (ASKED[data.face] || ((w) => `request to ${w}`))(who),
      reply: () => (REPLIED[data.face] || ((w) => `${w} replied`))(who),
      request_moved: () => movedWords(data),
    };
    const what = (parts[type] || (() => type))();
    const item = h("li", { class: `event event-${type}`, "data-type": type, "data-status": data.status,
      "data-request-id": data.req_id || null, "data-event-id": String(id) },
      h("time", { class: "muted", datetime: data.at, text: clock(data.at) }), " ",
      h("span", { class: "what", text: what, title: data.sid || null }),
      h("span", { class: "decided" }));
    if (this.decides) this.labelDecision(item);
    return item;
  }

  // Each line's "approved by key:reviewer", from the trail as last read.
  labelDecisions() {
    for (const item of $("task-timeline").children) this.labelDecision(item);
  }

  labelDecision(item) {
    item.querySelector(".decided").textContent = this.decided.of(item.dataset);
  }

  // Re-read the open task; coalesced, so a burst of events reads it at most twice.
  reread() {
    if (!this.openId) return null;
    if (this.reading) {
      this.readAgain = true;
      return this.reading;
    }
    const id = this.openId;
    this.reading = api.task(id).then(
      (task) => {
        if (this.openId === id) this.render(task);
      },
      (err) => this.error(`Could not read ${id}: ${err.message}`),
    ).finally(() => {
      this.reading = null;
      if (this.readAgain) {
        this.readAgain = false;
        this.reread();
      }
    });
    return this.reading;
  }

  close() {
    this.openId = null;
    this.decided.stop();
    if (this.timeline) this.timeline.stop();
    this.timeline = null;
    $("task-page").hidden = true;
    this.draw();
  }

  render(task) {
    $("task-page").hidden = false;
    $("task-page").dataset.taskId = task.id;
    $("task-page-h").replaceChildren("Task ", idChip(task.id, { label: "task id" }));
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
    const served = servedBy(a.served_by || {});
    return h("li", { class: "attempt" },
      h("p", {}, h("strong", { text: `Attempt ${a.attempt}` }), " ",
        h("span", { class: `badge status-${a.status}`, text: a.status }), " ",
        h("span", { class: "muted", text: `${clock(a.started_at)} → ${clock(a.ended_at)}` })),
      h("p", { class: "muted served", title: [...new Set(Object.values(a.served_by || {}))].join(", ") || null,
        text: `served by ${served || "the local agent"}` }),
      a.error ? h("p", { class: "error-text", text: `${a.error.code}: ${a.error.message}` }) : null,
      a.result ? h("pre", { class: "code", text: `result: ${pretty(a.result)}` }) : null,
      h("ol", { class: "outputs", "aria-label": `Outputs of attempt ${a.attempt}` },
        ...(a.outputs || []).map((o) =>
          h("li", {},
            h("span", { class: "muted", text: `${clock(o.at)} ${outputWords(o)}` }),
            h("pre", { class: "code", text: pretty(o.value) })))));
  }

  error(text) {
    $("tasks-error").textContent = text;
  }
}

function outputWords({ kind, source, ok }) {
  const words = OUTPUT_WORDS[`${kind}/${source}`] || `${kind} from ${source}`;
  return ok === false ? `${words}, marked failed` : words;
}

// "Ada" when one session served every face (the usual case), else who served what.
function servedBy(faces) {
  const sids = [...new Set(Object.values(faces))];
  if (!sids.length) return "";
  if (sids.length === 1) return names.of(sids[0]);
  return Object.entries(faces).map(([face, sid]) => `${FACE_WORK[face] || face}: ${names.of(sid)}`).join(" · ");
}
