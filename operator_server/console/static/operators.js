// Operators: the admin's list of sessions, their roles, connection state and
// pending requests, with Force leave.  Shown to whoever the server takes for
// the admin: the holder of the API token, or (when the server has none) the
// console on loopback.  Anyone else gets 401/403 and the section stays hidden.
// The list is read when the console starts, on Refresh and after a Force leave.

import { ApiError, api } from "./api.js";
import { $, clock, h } from "./dom.js";

export class OperatorsView {
  constructor() {
    this.ownSid = null;
    this.reading = null;
    this.again = false;
    $("operators-refresh").addEventListener("click", () => this.refresh());
  }

  start(ownSid) {
    this.ownSid = ownSid;
    return this.refresh();
  }

  stop() {
    this.ownSid = null;
    $("operators").hidden = true;
    $("operator-rows").replaceChildren();
  }

  // Coalesced; a refresh asked for during a read reads once more after it.
  refresh() {
    if (this.reading) {
      this.again = true;
      return this.reading;
    }
    this.reading = this.load().finally(() => {
      this.reading = null;
      if (this.again) {
        this.again = false;
        this.refresh();
      }
    });
    return this.reading;
  }

  async load() {
    const own = this.ownSid;
    let sessions;
    try {
      sessions = await api.operators();
    } catch (err) {
      if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
        $("operators").hidden = true; // not the admin: nothing to show
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
    $("operator-rows").replaceChildren(...sessions.map((s, i) => this.row(s, pending[i])));
    $("operators-status").textContent = `${sessions.length} session${sessions.length === 1 ? "" : "s"} · read ${new Date().toLocaleTimeString()}`;
  }

  row(session, pending) {
    const own = session.sid === this.ownSid;
    const detail = session.connected
      ? (session.remote ? `from ${session.remote}` : "")
      : (session.last_seen_at ? `last seen ${clock(session.last_seen_at)}` : "");
    return h("tr", { "data-sid": session.sid },
      h("td", {}, h("span", { class: "sid", text: session.sid }), own ? " (you)" : ""),
      h("td", { text: session.desc || "—" }),
      h("td", { text: session.roles.join(", ") || "—" }),
      h("td", {},
        h("span", { class: `badge ${session.connected ? "status-passed" : "status-cancelled"}`, text: session.connected ? "connected" : "disconnected" }),
        detail ? h("span", { class: "muted", text: ` ${detail}` }) : null),
      h("td", {}, this.pending(session, pending)),
      h("td", {}, own ? null : h("button", {
        type: "button",
        class: "danger",
        text: "Force leave",
        title: `End ${session.sid}: its roles are released and its pending requests fail`,
        onclick: (e) => this.forceLeave(session.sid, e.currentTarget),
      })));
  }

  pending(session, list) {
    if (list === null) return `${session.pending} (could not read them)`;
    if (!list.length) return "none";
    return h("ul", { class: "pending", "aria-label": `Pending requests of ${session.sid}` },
      ...list.map((p) =>
        h("li", { text: `${p.type} · ${p.task_id}${p.agent ? ` · ${p.agent}` : ""} · since ${clock(p.issued_at)}` })));
  }

  async forceLeave(sid, button) {
    button.disabled = true;
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
