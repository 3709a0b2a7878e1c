// Who decided each request of the open task, read from its audit trail
// (GET /v1/audit?task_id=, every page): the line "created" reads "created by
// key:ci", "Ada answered the approval" goes on "— approved by key:reviewer".
// A decision is matched to its timeline line by the request's id (a reply
// event and the row of what it decided share it); the task's creation and
// its cancel, which have no request, by the line's kind.
//
// The trail is the admin's to read (as the Operators list's names are): a
// principal's name can be a person (a JWT's subject), and tasks:read says
// what happened, not who.  Without admin the trail is never asked for, so no
// refusal is logged; the page says where the names would come from.
//
// Live enough: the page re-reads the trail when its task's stream brings an
// event a decision writes (the row commits with that event, so it is there
// to read); at most one read is in flight and one more queued.

import { api } from "./api.js";

// What a request's decision reads as, after the timeline line it belongs to.
const WORDS = {
  "hook.approved": "approved",
  "hook.rejected": "rejected",
  "ask.answered": "answered",
  "ask.declined": "declined",
  "spawn.acked": "acknowledged",
  "spawn.halted": "halted",
  "escalation.upheld": "upheld",
  "escalation.overridden": "overridden",
};
// Events after which the trail may hold a new decision of this task.
const DECIDING = new Set(["created", "reply", "status"]);

export const NOT_SHOWN = "who decided each request: shown to a principal holding admin";

export class DecidedBy {
  // onRead: the trail was read again; the page relabels its lines.
  constructor({ onRead = () => {}, onError = () => {} } = {}) {
    this.onRead = onRead;
    this.onError = onError;
    this.taskId = null;
    this.byReq = new Map(); // req_id -> the row deciding it
    this.byTask = new Map(); // "task.created" | "task.cancelled" -> its row
    this.reading = null;
    this.readAgain = false;
  }

  follow(taskId) {
    this.taskId = taskId;
    this.byReq.clear();
    this.byTask.clear();
    this.reread();
  }

  stop() {
    this.taskId = null;
    this.readAgain = false;
  }

  // An event of the open task's stream: re-read when it may follow a decision.
  heard(type) {
    if (DECIDING.has(type)) this.reread();
  }

  reread() {
    if (!this.taskId) return;
    if (this.reading) {
      this.readAgain = true;
      return;
    }
    const id = this.taskId;
    this.reading = api.audit(id).then(
      (entries) => {
        if (this.taskId !== id) return; // another task opened meanwhile
        this.learn(entries);
        this.onRead();
      },
      (err) => {
        if (this.taskId === id) this.onError(`Could not read who decided: ${err.message}`);
      },
    ).finally(() => {
      this.reading = null;
      if (this.readAgain) {
        this.readAgain = false;
        this.reread();
      }
    });
  }

  learn(entries) {
    for (const row of entries) {
      if (row.action === "task.created" || row.action === "task.cancelled") this.byTask.set(row.action, row);
      else if (row.action in WORDS && row.req_id) this.byReq.set(row.req_id, row);
      // request.issued and worker.result decide nothing: no line names them.
    }
  }

  // What follows a timeline line's words ({type, requestId, status} as its data
  // attributes hold them): " — approved by key:reviewer" after a reply, " by
  // key:ci" after "created" or "status → cancelled"; "" when none is known.
  of({ type, requestId, status }) {
    if (type === "reply") {
      const row = this.byReq.get(requestId);
      return row ? ` — ${WORDS[row.action]} by ${row.principal}` : "";
    }
    let row = null;
    if (type === "created") row = this.byTask.get("task.created");
    else if (type === "status" && status === "cancelled") row = this.byTask.get("task.cancelled");
    return row ? ` by ${row.principal}` : "";
  }
}
