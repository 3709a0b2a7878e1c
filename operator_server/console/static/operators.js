// Operators: the admin's list of sessions, their roles, connection state and
// pending requests, with Force leave.  Shown to whoever the server takes for
// the admin: the holder of the API token, or (when the server has none) the
// console on loopback.  Anyone else gets 401/403 and the section stays hidden.
//
// The list is live: read when the console starts, then again (coalesced) each
// time the task event stream reports a request issued or answered or a task's
// status changing, since those are what change a session's pending requests.
// A session joining, connecting, dropping or leaving is no task event (the
// event stream is the tasks' own, stored and resumable by id, and every node's
// sessions would have to be relayed into it), so the panel also re-reads itself
// every SESSIONS_EVERY_MS while the page is visible; a hidden tab reads
// nothing, and reads at once when shown again.  Refresh still reads now.
// Force leave asks for confirmation in place before it ends a session.

import { ApiError, api } from "./api.js";
import { $, clock, h, idChip } from "./dom.js";
import { names } from "./names.js";

// The events after which what sessions hold pending may differ.
const CHANGES_PENDING = new Set(["request", "reply", "request_moved", "status"]);
const REQUEST_WORDS = { hook_before: "approval", ask: "question", spawn: "work" };
// How often a visible panel re-reads the sessions (one GET /v1/operators, plus
// the pending list of each session holding some).
const SESSIONS_EVERY_MS = 5000;

export class OperatorsView {
  constructor() {
    this.ownSid = null;
    this.reading = null;
    this.again = false;
    this.shown = new Map(); // sid -> [session, pending] as last drawn
    this.confirming = new Set(); // sids whose Force leave waits for a yes
    this.timer = null;
    this.denied = false; // not the admin: nothing to re-read
    $("operators-refresh").addEventListener("click", () => this.refresh());
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && this.ownSid) this.refresh();
    });
  }

  heard(event) {
    if (this.ownSid && CHANGES_PENDING.has(event.type)) this.refresh();
  }

  start(ownSid) {
    this.ownSid = ownSid;
    this.denied = false;
    return this.refresh();
  }

  stop() {
    this.ownSid = null;
    clearTimeout(this.timer);
    this.timer = null;
    this.shown.clear();
    this.confirming.clear();
    $("operators").hidden = true;
    $("operator-rows").replaceChildren();
  }

  // Coalesced; a refresh asked for during a read reads once more after it.
  refresh() {
    if (this.reading) {
      this.again = true;
      return this.reading;
    }
    clearTimeout(this.timer); // this read is the next one due
    this.timer = null;
    this.reading = this.load().finally(() => {
      this.reading = null;
      if (this.again) {
        this.again = false;
        this.refresh();
      } else {
        this.schedule();
      }
    });
    return this.reading;
  }

  // The next timed read, counted from the end of this one (reads never overlap
  // or pile up behind a slow server).  None while signed out, not the admin, or
  // hidden: the visibilitychange listener reads when the page is shown again.
  schedule() {
    clearTimeout(this.timer);
    this.timer = null;
    if (!this.ownSid || this.denied || document.hidden) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!document.hidden) this.refresh();
    }, SESSIONS_EVERY_MS);
  }

  async load() {
    const own = this.ownSid;
    let sessions;
    try {
      sessions = await api.operators();
    } catch (err) {
      if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
        $("operators").hidden = true; // not the admin: nothing to show
        this.denied = true;
        return;
      }
      this.error(`Could not list operators: ${err.message}`);
      return;
    }
    const pending = await Promise.all(
      sessions.map((s) =>
        s.pending
          ? api.pendingOf(s.sid, api.apiToken).then((b) => b.pending, () => null)
          : Promise.resolve([])));
    if (own !== this.ownSid) return; // signed out meanwhile
    this.error("");
    $("operators").hidden = false;
    for (const s of sessions) names.learn(s.sid, s.sid === own ? null : s.desc);
    this.shown = new Map(sessions.map((s, i) => [s.sid, [s, pending[i]]]));
    for (const sid of this.confirming) if (!this.shown.has(sid)) this.confirming.delete(sid);
    // A row whose session reads the same is kept (not redrawn), so a live
    // refresh does not pull a button from under the pointer.
    const drawn = new Map([...$("operator-rows").children].map((r) => [r.dataset.sid, r]));
    $("operator-rows").replaceChildren(...sessions.map((s, i) => {
      const old = drawn.get(s.sid);
      const looks = JSON.stringify([s, pending[i], this.confirming.has(s.sid)]);
      if (old && old.dataset.looks === looks) return old;
      const row = this.row(s, pending[i]);
      row.dataset.looks = looks;
      return row;
    }));
    $("operators-status").textContent = `${sessions.length} session${sessions.length === 1 ? "" : "s"} · read ${new Date().toLocaleTimeString()}`;
  }

  row(session, pending) {
    const own = session.sid === this.ownSid;
    const detail = session.connected
      ? (session.remote ? `from ${session.remote}` : "")
      : (session.last_seen_at ? `last seen ${clock(session.last_seen_at)}` : "");
    return h("tr", { "data-sid": session.sid },
      h("td", {}, h("span", { class: "sid" }, idChip(session.sid, { label: "session id" })), own ? " (you)" : ""),
      // Who minted it: whatever it answers, it answers on that principal's authority.
      h("td", {}, session.desc || "—",
        session.minted_by ? h("span", { class: "muted minted-by", text: ` minted by ${session.minted_by}` }) : null),
      h("td", { text: session.roles.join(", ") || "—" }),
      h("td", {},
        h("span", { class: `badge ${session.connected ? "status-passed" : "status-cancelled"}`, text: session.connected ? "connected" : "disconnected" }),
        detail ? h("span", { class: "muted", text: ` ${detail}` }) : null),
      h("td", {}, this.pending(session, pending)),
      h("td", {}, own ? null : this.leaveControls(session)));
  }

  leaveControls(session) {
    const who = session.desc || names.of(session.sid);
    if (!this.confirming.has(session.sid)) {
      return h("button", {
        type: "button",
        class: "danger",
        text: "Force leave",
        title: `End ${session.sid}: its roles are released and its pending requests fail`,
        onclick: () => this.ask(session.sid, true),
      });
    }
    return h("div", { class: "confirm", role: "group", "aria-label": `Force leave ${who}?` },
      h("span", { text: `End ${who}'s session? Its roles are released and its pending requests fail.` }),
      h("button", { type: "button", class: "danger", text: "Confirm force leave",
        onclick: (e) => this.forceLeave(session.sid, e.currentTarget) }),
      h("button", { type: "button", text: "Keep session", onclick: () => this.ask(session.sid, false) }));
  }

  // Show (or take back) the confirmation in this session's row.
  ask(sid, confirming) {
    if (confirming) this.confirming.add(sid);
    else this.confirming.delete(sid);
    const drawn = this.shown.get(sid);
    const row = $("operator-rows").querySelector(`tr[data-sid="${CSS.escape(sid)}"]`);
    if (drawn && row) {
      const fresh = this.row(...drawn);
      fresh.dataset.looks = JSON.stringify([...drawn, confirming]);
      row.replaceWith(fresh);
      fresh.querySelector(confirming ? ".confirm button" : "button.danger").focus();
    }
  }

  pending(session, list) {
    if (list === null) return `${session.pending} (could not read them)`;
    if (!list.length) return "none";
    return h("ul", { class: "pending", "aria-label": `Pending requests of ${session.sid}` },
      ...list.map((p) =>
        h("li", {}, `${REQUEST_WORDS[p.type] || p.type} · task `, idChip(p.task_id, { label: "task id" }),
          `${p.agent ? ` · ${p.agent}` : ""} · since ${clock(p.issued_at)}`)));
  }

  async forceLeave(sid, button) {
    button.disabled = true;
    this.confirming.delete(sid);
    try {
      await api.forceLeave(sid);
      $("operators-status").textContent = `Removed ${sid}`;
    } catch (err) {
      this.error(`Could not remove ${sid}: ${err.message}`);
      button.disabled = false;
      return;
    }
    await this.refresh();
  }

  error(text) {
    $("operators-error").textContent = text;
  }
}
