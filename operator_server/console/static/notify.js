// Reaching the person while the console's tab is hidden: each new request
// that arrives then counts in the page title ("(2) operator-server console")
// and, once they have said so, raises a browser notification.  Showing the tab
// again clears the count.
//
// Permission is asked only when the person clicks "Notify me", never on
// load: a prompt nobody asked for is one a browser learns to block.  Their
// choice (on or off) is a preference of this browser, not a secret, so it
// lives in localStorage and a reload neither asks again nor forgets it; the
// browser keeps the permission itself.  A notification is tagged with the
// request id (a second one for the same request replaces the first), says
// what is asked, for which task and agent, and a click on it brings the tab
// forward at that request's card.  A request withdrawn while the tab is
// hidden (answered elsewhere, reassigned, escalated on) waits no longer: its
// notification closes and it leaves the count.

import { $, shortId } from "./dom.js";

const CHOICE_KEY = "operator-console-notify";
const BODY_MAX = 140;

// The control's words for each state, and what its status line says.
const STATES = {
  unsupported: "notifications: not available in this browser",
  insecure: "notifications: need https (or localhost)",
  blocked: "notifications: blocked by the browser (allow them in the site settings)",
  on: "notifications on",
  off: "notifications off",
};

function readChoice() {
  try {
    return localStorage.getItem(CHOICE_KEY) === "on";
  } catch {
    return false; // storage disabled: off until clicked, each load
  }
}

function writeChoice(on) {
  try {
    localStorage.setItem(CHOICE_KEY, on ? "on" : "off");
  } catch {
    // storage disabled: the choice lasts for this page only
  }
}

// One line of at most BODY_MAX characters from a directive or a question.
function brief(value) {
  const text = (typeof value === "string" ? value : JSON.stringify(value) ?? "").replace(/\s+/g, " ").trim();
  return text.length > BODY_MAX ? `${text.slice(0, BODY_MAX - 1)}…` : text;
}

// The role the request reached this session by: the first of the task's
// operator chain (its role, then its escalation steps) this session holds;
// else every role the session holds.
function roleOf(task, held) {
  const chain = task && task.operator ? [task.operator.role, ...(task.operator.escalate || []).map((s) => s.role)] : [];
  return chain.find((role) => role && held.includes(role)) || held.join(", ");
}

export class Notifier {
  constructor() {
    this.baseTitle = document.title;
    this.roles = [];
    this.wanted = readChoice();
    this.unread = new Set(); // req_ids that arrived while hidden and still wait
    this.shown = new Map(); // req_id -> the Notification on screen
    this.button = $("notify");
    this.status = $("notify-state");
    this.button.addEventListener("click", () => this.toggle());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.seen();
    });
    this.render();
    // The person may allow or block notifications in the site settings while
    // the page is open: follow it (where the Permissions API can say).
    if (navigator.permissions && this.state() !== "unsupported") {
      navigator.permissions.query({ name: "notifications" }).then(
        (status) => {
          status.onchange = () => this.render();
        },
        () => {},
      );
    }
  }

  // The session's roles, to name the one a request came by.
  signedIn(roles) {
    this.roles = roles;
  }

  state() {
    if (!window.isSecureContext) return "insecure";
    if (!("Notification" in window)) return "unsupported";
    if (Notification.permission === "denied") return "blocked";
    return this.wanted && Notification.permission === "granted" ? "on" : "off";
  }

  render() {
    const state = this.state();
    this.button.disabled = state !== "on" && state !== "off";
    this.button.setAttribute("aria-pressed", String(state === "on"));
    this.status.textContent = STATES[state];
    this.button.title = STATES[state];
  }

  async toggle() {
    if (this.state() === "on") {
      this.wanted = false;
    } else {
      // Asked here, from the click (a browser that already has the answer
      // gives it without a prompt).
      this.wanted = (await Notification.requestPermission()) === "granted";
    }
    writeChoice(this.wanted);
    this.render();
  }

  // A request new to this tab (not a replay of one already shown).  `task`:
  // a promise of the task, for what the notification says.
  arrived(frame, title, task) {
    if (document.visibilityState !== "hidden") return;
    this.unread.add(frame.req_id);
    this.retitle();
    if (this.state() !== "on") return;
    task.then(
      (found) => this.show(frame, title, found),
      () => this.show(frame, title, null), // not readable: the frame alone
    );
  }

  show(frame, title, task) {
    // Seen or withdrawn while the task was read: nothing left to announce.
    if (!this.unread.has(frame.req_id) || this.state() !== "on") return;
    const agent = frame.agent || (task && task.agent) || "an agent";
    // Without the task, only a hook_before's frame holds the bare directive: a
    // spawn's is the rendered instructions, worker handle included.
    const fallback = frame.type === "hook_before" ? frame.directive : undefined;
    const asked = frame.type === "ask" ? frame.question : task ? task.directive : fallback;
    const where = `${agent} on ${shortId(frame.task_id)}`;
    const role = roleOf(task, this.roles);
    const note = new Notification(role ? `${title} · ${role}` : title, {
      body: asked === undefined ? where : `${where}: ${brief(asked)}`,
      tag: frame.req_id,
    });
    note.onclick = () => {
      window.focus();
      const card = document.getElementById(`card-${frame.req_id}`);
      if (card) card.scrollIntoView({ block: "center" });
      note.close();
    };
    note.onclose = () => {
      if (this.shown.get(frame.req_id) === note) this.shown.delete(frame.req_id);
    };
    this.shown.set(frame.req_id, note);
  }

  // The request no longer waits here (answered, withdrawn, moved on).
  gone(reqId) {
    const note = this.shown.get(reqId);
    if (note) note.close();
    this.shown.delete(reqId);
    if (this.unread.delete(reqId)) this.retitle();
  }

  // The tab is shown again: the person sees the inbox itself, so what was
  // announced is off the screen and out of the count.
  seen() {
    for (const note of this.shown.values()) note.close();
    this.shown.clear();
    this.unread.clear();
    this.retitle();
  }

  retitle() {
    document.title = this.unread.size ? `(${this.unread.size}) ${this.baseTitle}` : this.baseTitle;
  }
}
